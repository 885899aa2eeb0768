//! code: names Python frames from the code objects the sampler recorded.
//!
//! A Python frame arrives as (code object address, instruction). The code
//! object is read from the process's memory (`process_vm_readv`, every
//! read bounded) while the process lives: the capture session resolves the
//! code objects of each drain at once ([`Names::resolve`]), so frames of a
//! process that exits before the profile is built still have their names.
//! Each (process, code object) is read once and cached with its name
//! (qualified from 3.11), file, first line and line table, within a byte
//! budget; a process's entries go when it exits or execs. Lines are
//! computed per frame from the line table (`co_lnotab`, the 3.10 line
//! table, or the 3.11+ location table).

use std::collections::HashMap;
use std::sync::Arc;

use super::{CodeLayout, LineFormat, PyProcess};

/// Characters of a name or file name kept.
const MAX_STR: usize = 1024;
/// Bytes of one line table read (larger ones give first lines only).
const MAX_LINETABLE: usize = 256 * 1024;
/// Bytes all cached code objects may take.
const CACHE_BUDGET: usize = 64 << 20;
/// Code objects cached per process.
const MAX_PER_PROCESS: usize = 200_000;

/// One code object's names and line table.
#[derive(Debug)]
pub struct CodeInfo {
    /// Qualified name (3.11+) or name.
    pub name: Arc<str>,
    /// The file it was compiled from.
    pub file: Arc<str>,
    /// `co_firstlineno`.
    pub first_line: u32,
    table: Box<[u8]>,
    format: LineFormat,
    adaptive: u16,
}

impl CodeInfo {
    /// The line of the instruction a frame recorded (`instr` as the
    /// sampler gave it); the first line when unknown.
    pub fn line(&self, instr: u32) -> u32 {
        let line = match self.format {
            LineFormat::Lnotab => lnotab_line(&self.table, self.first_line, instr as i32 as i64),
            LineFormat::Linetable310 => linetable310_line(
                &self.table,
                self.first_line,
                (instr as i32 as i64).saturating_mul(2),
            ),
            LineFormat::Locations => {
                let units = (instr.saturating_sub(self.adaptive as u32) / 2) as u64;
                locations_line(&self.table, self.first_line, units)
            }
        };
        line.filter(|&l| l > 0).unwrap_or(self.first_line)
    }
}

/// Why Python frames went unnamed, and how many were named.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NameStats {
    /// Code objects read and named.
    pub named: u64,
    /// Code objects whose memory could not be read (the process exited
    /// first, or the address was stale).
    pub unreadable: u64,
    /// Addresses that did not hold a code object.
    pub not_code: u64,
    /// Code objects not cached: the cache budget was spent.
    pub cache_full: u64,
}

/// The Python processes of a session and the code objects named so far.
#[derive(Default)]
pub struct Names {
    procs: HashMap<u32, PyProcess>,
    codes: HashMap<u32, HashMap<u64, Option<Arc<CodeInfo>>>>,
    bytes: usize,
    stats: NameStats,
}

impl Names {
    /// A Python process was found.
    pub fn add_process(&mut self, pid: u32, p: PyProcess) {
        if self
            .procs
            .get(&pid)
            .is_some_and(|old| old.runtime != p.runtime)
        {
            self.forget(pid);
        }
        self.procs.insert(pid, p);
    }

    /// Drops what is known of a process (it exited or exec'd).
    pub fn forget(&mut self, pid: u32) {
        self.procs.remove(&pid);
        if let Some(codes) = self.codes.remove(&pid) {
            for c in codes.values().flatten() {
                self.bytes = self.bytes.saturating_sub(cost(c));
            }
        }
    }

    /// The process, if it runs CPython.
    pub fn process(&self, pid: u32) -> Option<&PyProcess> {
        self.procs.get(&pid)
    }

    /// Python processes known.
    pub fn processes(&self) -> usize {
        self.procs.len()
    }

    /// Code objects cached, and their bytes.
    pub fn cached(&self) -> (usize, usize) {
        (self.codes.values().map(|c| c.len()).sum(), self.bytes)
    }

    /// Counts so far.
    pub fn stats(&self) -> NameStats {
        self.stats
    }

    /// Reads the code objects of a stack of Python frames (the sampler's
    /// word pairs) that are not cached yet.
    pub fn resolve(&mut self, pid: u32, words: &[u64]) {
        let Some(p) = self.procs.get(&pid) else {
            return;
        };
        let codes = self.codes.entry(pid).or_default();
        for pair in words.chunks_exact(2) {
            let addr = pair[0];
            if codes.contains_key(&addr) {
                continue;
            }
            if self.bytes >= CACHE_BUDGET || codes.len() >= MAX_PER_PROCESS {
                self.stats.cache_full += 1;
                continue;
            }
            let info = match read_code(pid, addr, p) {
                Ok(c) => {
                    self.stats.named += 1;
                    self.bytes += cost(&c);
                    Some(Arc::new(c))
                }
                Err(Unread::Memory) => {
                    self.stats.unreadable += 1;
                    None
                }
                Err(Unread::NotCode) => {
                    self.stats.not_code += 1;
                    None
                }
            };
            codes.insert(addr, info);
        }
    }

    /// The code object at `addr` in process `pid`, if it was read.
    pub fn code(&self, pid: u32, addr: u64) -> Option<&Arc<CodeInfo>> {
        self.codes.get(&pid)?.get(&addr)?.as_ref()
    }
}

fn cost(c: &CodeInfo) -> usize {
    std::mem::size_of::<CodeInfo>() + 64 + c.name.len() + c.file.len() + c.table.len()
}

enum Unread {
    Memory,
    NotCode,
}

/// Reads `buf.len()` bytes at `addr` of process `pid`; false unless all
/// were read.
pub fn read_memory(pid: u32, addr: u64, buf: &mut [u8]) -> bool {
    if buf.is_empty() {
        return true;
    }
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: one local iovec over `buf`, which outlives the call; the
    // remote one is only read by the kernel, in the other process.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    n == buf.len() as isize
}

fn u64_at(b: &[u8], off: u16) -> u64 {
    let o = off as usize;
    b.get(o..o + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
        .unwrap_or(0)
}

fn read_code(pid: u32, addr: u64, p: &PyProcess) -> Result<CodeInfo, Unread> {
    let l = &p.code;
    let need = [
        l.name,
        l.qualname.unwrap_or(0),
        l.filename,
        l.firstlineno,
        l.linetable,
    ]
    .into_iter()
    .max()
    .unwrap_or(0) as usize
        + 8;
    let mut head = vec![0u8; need.max(16)];
    if addr == 0 || !read_memory(pid, addr, &mut head) {
        return Err(Unread::Memory);
    }
    // ob_type: every code object's is PyCode_Type.
    if let Some(t) = p.code_type {
        if u64_at(&head, 8) != t {
            return Err(Unread::NotCode);
        }
    }
    let name_addr = l
        .qualname
        .map(|o| u64_at(&head, o))
        .filter(|&a| a != 0)
        .unwrap_or_else(|| u64_at(&head, l.name));
    let name = read_str(pid, name_addr, l).ok_or(Unread::NotCode)?;
    let file = read_str(pid, u64_at(&head, l.filename), l).unwrap_or_else(|| "<unknown>".into());
    let first_line = u64_at(&head, l.firstlineno) as u32;
    let table = read_bytes(pid, u64_at(&head, l.linetable)).unwrap_or_default();
    Ok(CodeInfo {
        name: Arc::from(name),
        file: Arc::from(file),
        first_line,
        table: table.into_boxed_slice(),
        format: l.lines,
        adaptive: l.adaptive.unwrap_or(0),
    })
}

/// A `str` object's text (compact strings only: every name and file name
/// the compiler makes is one), at most [`MAX_STR`] characters.
fn read_str(pid: u32, addr: u64, l: &CodeLayout) -> Option<String> {
    let mut head = vec![0u8; l.compact_size as usize];
    if addr == 0 || !read_memory(pid, addr, &mut head[..l.ascii_size as usize]) {
        return None;
    }
    let length = u64_at(&head, 16) as usize;
    let state = u32::from_le_bytes(head[32..36].try_into().ok()?);
    let kind = ((state >> 2) & 7) as usize;
    let compact = (state >> 5) & 1 == 1;
    let ascii = (state >> 6) & 1 == 1;
    if !compact || !matches!(kind, 1 | 2 | 4) || length > isize::MAX as usize {
        return None;
    }
    let n = length.min(MAX_STR);
    let data = if ascii {
        addr + l.ascii_size as u64
    } else {
        addr + l.compact_size as u64
    };
    let mut raw = vec![0u8; n * kind];
    if !read_memory(pid, data, &mut raw) {
        return None;
    }
    let text: String = match kind {
        1 if ascii => String::from_utf8_lossy(&raw).into_owned(),
        1 => raw.iter().map(|&b| b as char).collect(),
        2 => raw
            .chunks_exact(2)
            .map(|c| {
                char::from_u32(u16::from_le_bytes([c[0], c[1]]) as u32)
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
        _ => raw
            .chunks_exact(4)
            .map(|c| {
                char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
    };
    Some(crate::util::clean_name(&text).into_owned())
}

/// A `bytes` object's contents, at most [`MAX_LINETABLE`] bytes (else
/// none).
fn read_bytes(pid: u32, addr: u64) -> Option<Vec<u8>> {
    let mut head = [0u8; 32];
    if addr == 0 || !read_memory(pid, addr, &mut head) {
        return None;
    }
    let size = u64_at(&head, 16) as usize;
    if size > MAX_LINETABLE {
        return None;
    }
    let mut data = vec![0u8; size];
    read_memory(pid, addr + 32, &mut data).then_some(data)
}

/// 3.8-3.9: `co_lnotab` pairs of (address increment, signed line
/// increment); `lasti` in bytes.
pub fn lnotab_line(table: &[u8], first: u32, lasti: i64) -> Option<u32> {
    let mut line = first as i64;
    let mut addr = 0i64;
    for pair in table.chunks_exact(2) {
        addr += pair[0] as i64;
        if addr > lasti {
            break;
        }
        line += pair[1] as i8 as i64;
    }
    u32::try_from(line).ok()
}

/// 3.10: `co_linetable` pairs of (bytes covered, signed line delta, -128
/// for none); `addr` in bytes.
pub fn linetable310_line(table: &[u8], first: u32, addr: i64) -> Option<u32> {
    let mut line = first as i64;
    let mut end = 0i64;
    for pair in table.chunks_exact(2) {
        let start = end;
        end += pair[0] as i64;
        let delta = pair[1] as i8;
        let current = if delta == -128 {
            None
        } else {
            line += delta as i64;
            Some(line)
        };
        if addr >= start && addr < end {
            return current.and_then(|l| u32::try_from(l).ok());
        }
    }
    None
}

/// 3.11+: the location table; `unit` counts 2-byte code units.
pub fn locations_line(table: &[u8], first: u32, unit: u64) -> Option<u32> {
    let mut r = Reader { b: table, i: 0 };
    let mut line = first as i64;
    let mut addr = 0u64;
    while let Some(head) = r.byte() {
        if head & 0x80 == 0 {
            return None; // not at an entry: corrupt
        }
        let code = (head >> 3) & 15;
        let len = (head & 7) as u64 + 1;
        let has_line = match code {
            15 => false,
            14 => {
                line += r.svarint()?;
                r.varint()?;
                r.varint()?;
                r.varint()?;
                true
            }
            13 => {
                line += r.svarint()?;
                true
            }
            10..=12 => {
                line += (code - 10) as i64;
                r.byte()?;
                r.byte()?;
                true
            }
            _ => {
                r.byte()?;
                true
            }
        };
        if unit < addr + len {
            return has_line.then(|| u32::try_from(line).ok()).flatten();
        }
        addr += len;
    }
    None
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let v = *self.b.get(self.i)?;
        self.i += 1;
        Some(v)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut b = self.byte()?;
        let mut v = (b & 63) as u64;
        let mut shift = 0;
        while b & 64 != 0 {
            b = self.byte()?;
            shift += 6;
            if shift > 60 {
                return None;
            }
            v |= ((b & 63) as u64) << shift;
        }
        Some(v)
    }

    fn svarint(&mut self) -> Option<i64> {
        let v = self.varint()?;
        Some(if v & 1 == 1 {
            -((v >> 1) as i64)
        } else {
            (v >> 1) as i64
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lnotab_lines() {
        // Line 10 from 0, +2 lines at byte 6, +1 at byte 14 (then -3).
        let t = [6, 2, 8, 1, 4, (-3i8) as u8];
        assert_eq!(lnotab_line(&t, 10, 0), Some(10));
        assert_eq!(lnotab_line(&t, 10, 6), Some(12));
        assert_eq!(lnotab_line(&t, 10, 13), Some(12));
        assert_eq!(lnotab_line(&t, 10, 14), Some(13));
        assert_eq!(lnotab_line(&t, 10, 18), Some(10));
        assert_eq!(lnotab_line(&t, 10, -1), Some(10));
    }

    #[test]
    fn linetable310_lines() {
        // 4 bytes at +1 line, 2 bytes with no line, 6 bytes at +2.
        let t = [4, 1, 2, (-128i8) as u8, 6, 2];
        assert_eq!(linetable310_line(&t, 5, 0), Some(6));
        assert_eq!(linetable310_line(&t, 5, 4), None);
        assert_eq!(linetable310_line(&t, 5, 6), Some(8));
        assert_eq!(linetable310_line(&t, 5, 40), None);
    }

    #[test]
    fn location_table_lines() {
        // Entry 1: one-line form, +1 line (code 11), 2 units.
        // Entry 2: no-column form (13), svarint -1 (3), 1 unit.
        // Entry 3: none (15), 1 unit. Entry 4: long form (14), +5 (10).
        let t = [
            0x80 | (11 << 3) | 1,
            0,
            0,
            0x80 | (13 << 3),
            3,
            0x80 | (15 << 3),
            0x80 | (14 << 3),
            10,
            0,
            1,
            1,
            0x80 | 3, // short form (code 0), 4 units
            0,
        ];
        assert_eq!(locations_line(&t, 20, 0), Some(21));
        assert_eq!(locations_line(&t, 20, 1), Some(21));
        assert_eq!(locations_line(&t, 20, 2), Some(20));
        assert_eq!(locations_line(&t, 20, 3), None);
        assert_eq!(locations_line(&t, 20, 4), Some(25));
        assert_eq!(locations_line(&t, 20, 5), Some(25));
        assert_eq!(locations_line(&t, 20, 8), Some(25));
        assert_eq!(locations_line(&t, 20, 9), None);
        // Corrupt tables end the search, never panic.
        assert_eq!(locations_line(&[0x00, 0xff], 1, 0), None);
        assert_eq!(locations_line(&[0x80 | (14 << 3), 0x7f], 1, 0), None);
    }

    #[test]
    fn own_memory_reads() {
        let v: Vec<u8> = (0..64).collect();
        let mut out = [0u8; 16];
        assert!(read_memory(
            std::process::id(),
            v.as_ptr() as u64 + 8,
            &mut out
        ));
        assert_eq!(out[0], 8);
        assert!(!read_memory(std::process::id(), 8, &mut out));
    }
}
