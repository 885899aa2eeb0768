//! MiniDebugInfo: the `.gnu_debugdata` section of Fedora/RHEL binaries.
//!
//! The section holds an xz-compressed ELF file whose `.symtab` names the
//! functions that the stripped binary's `.dynsym` lacks, at the binary's
//! own virtual addresses. [`extract`] finds the section, decompresses it
//! into an anonymous in-memory file and checks that the result is ELF.
//!
//! The binary may belong to another user, so it is hostile input: only the
//! ELF header, the section header table and the section-name string table
//! are read, each with a bounded positioned read and checked arithmetic;
//! the compressed section and its decompressed contents are capped, and
//! decompression stops at the cap (an xz bomb writes no further, and the
//! decoder refuses dictionaries larger than the cap before allocating).

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;

/// Most section headers read from a binary.
const MAX_SECTIONS: u64 = 4096;
/// Largest section-name string table read.
const MAX_SHSTRTAB: u64 = 1 << 20;
/// Largest compressed `.gnu_debugdata` section read.
pub const MAX_COMPRESSED: u64 = 8 << 20;
/// Largest decompressed MiniDebugInfo kept.
pub const MAX_DECOMPRESSED: u64 = 64 << 20;
/// Most memory (KiB) the xz decoder may take for one block's dictionary:
/// the decompressed cap plus a little for the decoder itself.
pub(crate) const DECODER_MEM_LIMIT_KB: u32 = (MAX_DECOMPRESSED / 1024) as u32 + 1024;

/// Size of an ELF64 file header.
const EHDR_SIZE: usize = 64;
/// Size of an ELF64 section header.
const SHDR_SIZE: usize = 64;
/// `e_machine` of x86-64.
const EM_X86_64: u16 = 62;
/// Section type of a section that occupies no file space.
const SHT_NOBITS: u32 = 8;
/// `e_shstrndx` value meaning the index is in section 0's `sh_link`.
const SHN_XINDEX: u16 = 0xffff;
/// Name of the MiniDebugInfo section.
const SECTION_NAME: &[u8] = b".gnu_debugdata";

/// Why no MiniDebugInfo could be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MiniError {
    /// The file is not a little-endian x86-64 ELF64 file with a
    /// `.gnu_debugdata` section.
    Absent,
    /// The section or its decompressed contents exceed the caps.
    TooLarge,
    /// The ELF headers or the compressed data are malformed.
    Corrupt,
    /// No in-memory file could be created or written for the contents.
    Memfd,
}

impl fmt::Display for MiniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MiniError::Absent => "the binary carries no MiniDebugInfo.",
            MiniError::TooLarge => "the binary's MiniDebugInfo is larger than ember accepts.",
            MiniError::Corrupt => "the binary's MiniDebugInfo or its ELF headers are malformed.",
            MiniError::Memfd => "no in-memory file could hold the binary's MiniDebugInfo.",
        })
    }
}

impl std::error::Error for MiniError {}

/// Extracts the binary's MiniDebugInfo into an anonymous in-memory file
/// (memfd_create, MFD_CLOEXEC), checked to be an ELF file.
pub fn extract(binary: &File) -> Result<File, MiniError> {
    let (offset, size) = find_section(binary, SECTION_NAME)?;
    if size > MAX_COMPRESSED {
        return Err(MiniError::TooLarge);
    }
    let len = binary.metadata().map_err(|_| MiniError::Corrupt)?.len();
    if offset.checked_add(size).is_none_or(|end| end > len) {
        return Err(MiniError::Corrupt);
    }
    // size <= MAX_COMPRESSED, so it fits in usize.
    let mut compressed = vec![0u8; size as usize];
    binary
        .read_exact_at(&mut compressed, offset)
        .map_err(|_| MiniError::Corrupt)?;

    let mut out = memfd()?;
    decompress_capped(&compressed, &mut out, MAX_DECOMPRESSED)?;
    drop(compressed);

    out.seek(SeekFrom::Start(0)).map_err(|_| MiniError::Memfd)?;
    let mut magic = [0u8; 4];
    out.read_exact(&mut magic).map_err(|_| MiniError::Corrupt)?;
    if magic != *b"\x7fELF" {
        return Err(MiniError::Corrupt);
    }
    out.seek(SeekFrom::Start(0)).map_err(|_| MiniError::Memfd)?;
    Ok(out)
}

/// Creates an anonymous in-memory file, closed on exec.
fn memfd() -> Result<File, MiniError> {
    // SAFETY: the name is a valid NUL-terminated string and the flags are
    // a plain constant; the call has no other preconditions.
    let fd = unsafe { libc::memfd_create(c"ember-minidebuginfo".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MiniError::Memfd);
    }
    // SAFETY: fd was just returned by memfd_create and is owned by no one
    // else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// A writer that takes at most `left` bytes and refuses the write that
/// would go past it, remembering that it did.
struct Capped<W> {
    inner: W,
    left: u64,
    over: bool,
    failed: bool,
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            self.over = true;
            return Err(io::Error::other("decompressed size cap reached"));
        }
        match self.inner.write(buf) {
            Ok(n) => {
                self.left -= n as u64;
                Ok(n)
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| self.failed = true)
    }
}

/// Decompresses one xz stream into `out`, writing at most `cap` bytes.
fn decompress_capped<W: Write>(xz: &[u8], out: W, cap: u64) -> Result<(), MiniError> {
    let mut reader = lzma_rust2::XzReader::new_mem_limit(xz, false, DECODER_MEM_LIMIT_KB);
    let mut capped = Capped {
        inner: out,
        left: cap,
        over: false,
        failed: false,
    };
    match io::copy(&mut reader, &mut capped) {
        Ok(_) => Ok(()),
        Err(_) if capped.over => Err(MiniError::TooLarge),
        Err(_) if capped.failed => Err(MiniError::Memfd),
        Err(e) if e.kind() == io::ErrorKind::OutOfMemory => Err(MiniError::TooLarge),
        Err(_) => Err(MiniError::Corrupt),
    }
}

/// Reads a little-endian integer of `N` bytes at `at` in `buf`.
fn le<const N: usize>(buf: &[u8], at: usize) -> Result<[u8; N], MiniError> {
    at.checked_add(N)
        .and_then(|end| buf.get(at..end))
        .and_then(|s| s.try_into().ok())
        .ok_or(MiniError::Corrupt)
}

fn u16_at(buf: &[u8], at: usize) -> Result<u16, MiniError> {
    le(buf, at).map(u16::from_le_bytes)
}

fn u32_at(buf: &[u8], at: usize) -> Result<u32, MiniError> {
    le(buf, at).map(u32::from_le_bytes)
}

fn u64_at(buf: &[u8], at: usize) -> Result<u64, MiniError> {
    le(buf, at).map(u64::from_le_bytes)
}

/// The fields of one section header that matter here.
struct Section {
    name: u32,
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
}

fn section(table: &[u8], index: usize) -> Result<Section, MiniError> {
    let at = index.checked_mul(SHDR_SIZE).ok_or(MiniError::Corrupt)?;
    Ok(Section {
        name: u32_at(table, at)?,
        kind: u32_at(table, at + 4)?,
        offset: u64_at(table, at + 24)?,
        size: u64_at(table, at + 32)?,
        link: u32_at(table, at + 40)?,
    })
}

/// Reads `len` bytes at `offset`, any failure being [`MiniError::Corrupt`].
fn read_at(file: &File, offset: u64, len: u64) -> Result<Vec<u8>, MiniError> {
    let len = usize::try_from(len).map_err(|_| MiniError::Corrupt)?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|_| MiniError::Corrupt)?;
    Ok(buf)
}

/// The file name a binary's `.gnu_debuglink` names (a plain name: no
/// directory, at most 255 bytes), read with bounded reads.
pub fn debuglink(binary: &File) -> Option<String> {
    let (offset, size) = find_section(binary, b".gnu_debuglink").ok()?;
    let data = read_at(binary, offset, size.min(260)).ok()?;
    let name = data.split(|&b| b == 0).next()?;
    let name = std::str::from_utf8(name).ok()?;
    let plain =
        !name.is_empty() && name.len() < 256 && !name.contains('/') && name != "." && name != "..";
    plain.then(|| name.to_string())
}

/// Finds a section by name: its file offset and size.
fn find_section(file: &File, wanted: &[u8]) -> Result<(u64, u64), MiniError> {
    let mut ehdr = [0u8; EHDR_SIZE];
    file.read_exact_at(&mut ehdr, 0)
        .map_err(|_| MiniError::Absent)?;
    // ELF magic, 64-bit class, little-endian data, x86-64.
    if ehdr[..4] != *b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(MiniError::Absent);
    }
    if u16_at(&ehdr, 0x12)? != EM_X86_64 {
        return Err(MiniError::Absent);
    }
    let shoff = u64_at(&ehdr, 0x28)?;
    let shentsize = u16_at(&ehdr, 0x3a)?;
    let mut shnum = u64::from(u16_at(&ehdr, 0x3c)?);
    let shstrndx_field = u16_at(&ehdr, 0x3e)?;
    if shoff == 0 {
        return Err(MiniError::Absent);
    }
    if usize::from(shentsize) != SHDR_SIZE {
        return Err(MiniError::Corrupt);
    }

    // Section 0 carries the real count and string-table index when they do
    // not fit the header's 16-bit fields.
    let first = read_at(file, shoff, SHDR_SIZE as u64)?;
    let first = section(&first, 0)?;
    if shnum == 0 {
        shnum = first.size;
    }
    let shstrndx = if shstrndx_field == SHN_XINDEX {
        u64::from(first.link)
    } else {
        u64::from(shstrndx_field)
    };
    if shnum == 0 || shnum > MAX_SECTIONS {
        return Err(MiniError::Corrupt);
    }
    if shstrndx >= shnum {
        return Err(MiniError::Corrupt);
    }

    let table_len = shnum
        .checked_mul(SHDR_SIZE as u64)
        .ok_or(MiniError::Corrupt)?;
    shoff.checked_add(table_len).ok_or(MiniError::Corrupt)?;
    let table = read_at(file, shoff, table_len)?;

    // Both are below MAX_SECTIONS, so they fit in usize.
    let strtab = section(&table, shstrndx as usize)?;
    if strtab.kind == SHT_NOBITS || strtab.size > MAX_SHSTRTAB {
        return Err(MiniError::Corrupt);
    }
    strtab
        .offset
        .checked_add(strtab.size)
        .ok_or(MiniError::Corrupt)?;
    let names = read_at(file, strtab.offset, strtab.size)?;

    for index in 0..shnum as usize {
        let s = section(&table, index)?;
        let Some(rest) = names.get(s.name as usize..) else {
            continue;
        };
        let name = rest.split(|&b| b == 0).next().unwrap_or_default();
        if name == wanted {
            if s.kind == SHT_NOBITS {
                return Err(MiniError::Corrupt);
            }
            return Ok((s.offset, s.size));
        }
    }
    Err(MiniError::Absent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object, ObjectSymbol};
    use std::collections::HashMap;
    use std::path::Path;
    use std::process::Command;

    fn run(cmd: &mut Command) {
        let out = cmd.output().expect("tool runs");
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn symbols(path: &Path) -> HashMap<String, u64> {
        let data = std::fs::read(path).unwrap();
        symbols_of(&data)
    }

    fn symbols_of(data: &[u8]) -> HashMap<String, u64> {
        let file = object::File::parse(data).unwrap();
        file.symbols()
            .filter_map(|s| Some((s.name().ok()?.to_string(), s.address())))
            .collect()
    }

    const FUNCS: [&str; 3] = ["mini_alpha", "mini_beta", "mini_gamma"];

    /// Builds a binary carrying MiniDebugInfo the way Fedora does; returns
    /// the unstripped and the stripped-with-MiniDebugInfo paths.
    fn build_fixture(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let src = dir.join("prog.c");
        std::fs::write(
            &src,
            "#include <stdio.h>\n\
             __attribute__((noinline)) int mini_alpha(int x) { return x * 3 + 1; }\n\
             __attribute__((noinline)) int mini_beta(int x) { return mini_alpha(x) ^ 7; }\n\
             __attribute__((noinline)) int mini_gamma(int x) { return mini_beta(x) - 2; }\n\
             int main(int argc, char **argv) { (void)argv; printf(\"%d\\n\", mini_gamma(argc)); return 0; }\n",
        )
        .unwrap();
        let prog = dir.join("prog");
        run(Command::new("clang")
            .args(["-O2", "-g", "-o"])
            .arg(&prog)
            .arg(&src));
        run(Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(&prog)
            .arg(dir.join("prog.debug")));
        let nm = Command::new("nm")
            .arg(&prog)
            .args(["--format=posix", "--defined-only"])
            .output()
            .unwrap();
        assert!(nm.status.success());
        let mut funcs: Vec<&str> = std::str::from_utf8(&nm.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let name = f.next()?;
                matches!(f.next()?, "T" | "t").then_some(name)
            })
            .collect();
        funcs.sort_unstable();
        std::fs::write(dir.join("funcsyms"), funcs.join("\n") + "\n").unwrap();
        run(Command::new("objcopy")
            .args(["-S", "--remove-section", ".gdb_index", "--remove-section"])
            .arg(".comment")
            .arg(format!("--keep-symbols={}", dir.join("funcsyms").display()))
            .arg(dir.join("prog.debug"))
            .arg(dir.join("mini")));
        run(Command::new("xz").arg(dir.join("mini")));
        let stripped = dir.join("prog.stripped");
        run(Command::new("strip")
            .arg("--strip-all")
            .arg(&prog)
            .arg("-o")
            .arg(&stripped));
        run(Command::new("objcopy")
            .arg(format!(
                "--add-section=.gnu_debugdata={}",
                dir.join("mini.xz").display()
            ))
            .arg(&stripped));
        (prog, stripped)
    }

    #[test]
    fn extracts_fedora_style_minidebuginfo() {
        let dir = tempfile::tempdir().unwrap();
        let (prog, stripped) = build_fixture(dir.path());

        let full = symbols(&prog);
        let bare = symbols(&stripped);
        for f in FUNCS {
            assert!(
                full.contains_key(f),
                "{f} missing from the unstripped binary"
            );
            assert!(!bare.contains_key(f), "{f} left in the stripped binary");
        }

        let mut mini = extract(&File::open(&stripped).unwrap()).unwrap();
        let mut data = Vec::new();
        mini.read_to_end(&mut data).unwrap();
        let named = symbols_of(&data);
        for f in FUNCS {
            assert_eq!(named.get(f), full.get(f), "{f} at another address");
        }
        assert_ne!(full["mini_alpha"], 0);
    }

    #[test]
    fn binary_without_section_is_absent() {
        let dir = tempfile::tempdir().unwrap();
        let (prog, _) = build_fixture(dir.path());
        assert_eq!(
            extract(&File::open(&prog).unwrap()).unwrap_err(),
            MiniError::Absent
        );
    }

    fn extract_bytes(data: &[u8]) -> Result<File, MiniError> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(data).unwrap();
        extract(&f)
    }

    /// A minimal ELF64 x86-64 header with the given section table fields.
    fn ehdr(shoff: u64, shnum: u16, shstrndx: u16) -> Vec<u8> {
        let mut h = vec![0u8; EHDR_SIZE];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[6] = 1;
        h[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());
        h[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        h[0x3a..0x3c].copy_from_slice(&(SHDR_SIZE as u16).to_le_bytes());
        h[0x3c..0x3e].copy_from_slice(&shnum.to_le_bytes());
        h[0x3e..0x40].copy_from_slice(&shstrndx.to_le_bytes());
        h
    }

    fn shdr(name: u32, kind: u32, offset: u64, size: u64) -> Vec<u8> {
        let mut s = vec![0u8; SHDR_SIZE];
        s[..4].copy_from_slice(&name.to_le_bytes());
        s[4..8].copy_from_slice(&kind.to_le_bytes());
        s[24..32].copy_from_slice(&offset.to_le_bytes());
        s[32..40].copy_from_slice(&size.to_le_bytes());
        s
    }

    /// An ELF with sections [null, .shstrtab, .gnu_debugdata] whose last
    /// section has the given offset, size and contents appended.
    fn elf_with_debugdata(offset: Option<u64>, size: u64, payload: &[u8]) -> Vec<u8> {
        let names = b"\0.shstrtab\0.gnu_debugdata\0";
        let shoff = EHDR_SIZE as u64;
        let names_off = shoff + 3 * SHDR_SIZE as u64;
        let payload_off = names_off + names.len() as u64;
        let mut f = ehdr(shoff, 3, 1);
        f.extend(shdr(0, 0, 0, 0));
        f.extend(shdr(1, 3, names_off, names.len() as u64));
        f.extend(shdr(11, 1, offset.unwrap_or(payload_off), size));
        f.extend_from_slice(names);
        f.extend_from_slice(payload);
        f
    }

    fn xz_of(data: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        std::fs::write(&path, data).unwrap();
        run(Command::new("xz").arg(&path));
        std::fs::read(dir.path().join("d.xz")).unwrap()
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        // Empty, short and random files.
        assert_eq!(extract_bytes(b"").unwrap_err(), MiniError::Absent);
        assert_eq!(extract_bytes(b"\x7fELF").unwrap_err(), MiniError::Absent);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let random: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(extract_bytes(&random).unwrap_err(), MiniError::Absent);
        // 32-bit and big-endian ELF files are not read.
        let mut h = ehdr(64, 1, 0);
        h[4] = 1;
        assert_eq!(extract_bytes(&h).unwrap_err(), MiniError::Absent);
        let mut h = ehdr(64, 1, 0);
        h[5] = 2;
        assert_eq!(extract_bytes(&h).unwrap_err(), MiniError::Absent);
        // Section tables past the end, huge or at an overflowing offset.
        assert_eq!(
            extract_bytes(&ehdr(1 << 40, 10, 1)).unwrap_err(),
            MiniError::Corrupt
        );
        assert_eq!(
            extract_bytes(&ehdr(u64::MAX - 10, 10, 1)).unwrap_err(),
            MiniError::Corrupt
        );
        let mut huge = ehdr(64, 0, SHN_XINDEX);
        huge.extend(shdr(0, 0, 0, u64::MAX));
        assert_eq!(extract_bytes(&huge).unwrap_err(), MiniError::Corrupt);
        assert_eq!(
            extract_bytes(&ehdr(64, 3, 7)).unwrap_err(),
            MiniError::Corrupt
        );
        // A string table larger than the cap.
        let mut big_names = ehdr(64, 2, 1);
        big_names.extend(shdr(0, 0, 0, 0));
        big_names.extend(shdr(1, 3, 0, MAX_SHSTRTAB + 1));
        assert_eq!(extract_bytes(&big_names).unwrap_err(), MiniError::Corrupt);
        // A valid table without the section.
        let mut plain = ehdr(64, 2, 1);
        plain.extend(shdr(0, 0, 0, 0));
        plain.extend(shdr(1, 3, 64 + 128, 11));
        plain.extend_from_slice(b"\0.shstrtab\0");
        assert_eq!(extract_bytes(&plain).unwrap_err(), MiniError::Absent);
        // The section pointing past the end of the file or overflowing.
        assert_eq!(
            extract_bytes(&elf_with_debugdata(Some(1 << 30), 100, b"")).unwrap_err(),
            MiniError::Corrupt
        );
        assert_eq!(
            extract_bytes(&elf_with_debugdata(Some(u64::MAX), 100, b"")).unwrap_err(),
            MiniError::Corrupt
        );
        assert_eq!(
            extract_bytes(&elf_with_debugdata(None, 1000, b"short")).unwrap_err(),
            MiniError::Corrupt
        );
        // Over the compressed cap.
        assert_eq!(
            extract_bytes(&elf_with_debugdata(None, MAX_COMPRESSED + 1, b"")).unwrap_err(),
            MiniError::TooLarge
        );
        // Not xz, and xz of something that is not ELF.
        let junk = b"not an xz stream at all";
        assert_eq!(
            extract_bytes(&elf_with_debugdata(None, junk.len() as u64, junk)).unwrap_err(),
            MiniError::Corrupt
        );
        let text = xz_of(b"hello, this is no ELF file\n");
        assert_eq!(
            extract_bytes(&elf_with_debugdata(None, text.len() as u64, &text)).unwrap_err(),
            MiniError::Corrupt
        );
        // Truncated xz of an ELF file.
        let elf = xz_of(&plain);
        let cut = &elf[..elf.len() / 2];
        assert_eq!(
            extract_bytes(&elf_with_debugdata(None, cut.len() as u64, cut)).unwrap_err(),
            MiniError::Corrupt
        );
        // The whole xz of an ELF file is taken.
        let mut got = extract_bytes(&elf_with_debugdata(None, elf.len() as u64, &elf)).unwrap();
        let mut back = Vec::new();
        got.read_to_end(&mut back).unwrap();
        assert_eq!(back, plain);
    }

    #[test]
    fn damaged_xz_is_refused_without_panic() {
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let xz = xz_of(&text);
        for at in 0..xz.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = xz.clone();
                bad[at] ^= flip;
                let mut out = Vec::new();
                // Any outcome but a panic; a damaged stream is never taken
                // as the original.
                if decompress_capped(&bad, &mut out, 1 << 20).is_ok() {
                    assert_eq!(out, text, "byte {at} ^ {flip:#x} decoded to other data");
                }
            }
        }
    }

    #[test]
    fn decompression_stops_at_the_cap() {
        // 1 MiB of zeros compresses to a few hundred bytes.
        let zeros = xz_of(&vec![0u8; 1 << 20]);
        assert!(zeros.len() < 4096);
        let mut out = Vec::new();
        assert_eq!(
            decompress_capped(&zeros, &mut out, 100_000).unwrap_err(),
            MiniError::TooLarge
        );
        assert!(out.len() <= 100_000, "wrote {} bytes", out.len());
        let mut out = Vec::new();
        decompress_capped(&zeros, &mut out, 1 << 20).unwrap();
        assert_eq!(out.len(), 1 << 20);
    }
}
