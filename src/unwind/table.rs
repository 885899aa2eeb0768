//! Unwind tables: a binary's call frame information (`.eh_frame`, else
//! `.debug_frame`) reduced to sorted rows the BPF unwinder binary-searches.
//!
//! A row says, from its pc up to the next row's pc, how to find the caller's
//! stack pointer (the CFA) and saved `rbp`; on x86-64 the return address is
//! always at CFA - 8. Consecutive rows with the same rule are merged, and
//! code no FDE covers gets a `Gap` row so the unwinder falls back to frame
//! pointers there instead of applying a neighbour's rule.

use std::fs::File;

use anyhow::{bail, Context, Result};
use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian, Register,
    RegisterRule, UnwindContext, UnwindSection,
};
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
use object::{ReadCache, ReadRef};

use crate::untrusted::{Refusal, What, MAX_CFI_BYTES, MAX_TABLE_READ_BYTES};
use std::cell::Cell;

/// Tables larger than this are refused: the BPF binary search runs 22 steps.
pub const MAX_ROWS: usize = 1 << 22;
/// Code bytes per page index entry (`UNW_PAGE_SHIFT`).
pub const PAGE_SHIFT: u32 = 12;

const RSP: Register = Register(7);
const RBP: Register = Register(6);
const RA: Register = Register(16);

/// How to find the caller's frame (`UNW_CFA_*` in bpf/ember.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cfa {
    /// No CFI covers the code: frame pointers.
    Gap,
    /// CFA = rsp + offset.
    Rsp(i32),
    /// CFA = rbp + offset.
    Rbp(i32),
    /// A PLT stub: CFA = rsp + offset + ((pc & 15) >= threshold ? 8 : 0).
    Plt {
        /// Offset from rsp.
        offset: i32,
        /// Low pc bits at and above which 8 more is added.
        threshold: u8,
    },
    /// CFA = *(rsp + offset).
    DerefRsp(i32),
    /// CFA = *(rbp + offset), as in functions that realign the stack.
    DerefRbp(i32),
    /// A signal trampoline: the interrupted registers are in the ucontext.
    Signal,
    /// The return address is undefined: the outermost frame.
    End,
    /// A rule ember cannot follow.
    Unsupported,
}

/// Where the caller's `rbp` is (`UNW_RBP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rbp {
    /// Unchanged.
    Same,
    /// Saved at CFA + offset.
    Cfa(i32),
    /// Saved at rbp + offset.
    AtRbp(i32),
    /// Not recoverable.
    Lost,
}

/// One decoded rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The CFA rule.
    pub cfa: Cfa,
    /// The rbp rule.
    pub rbp: Rbp,
}

impl Rule {
    const GAP: Rule = Rule {
        cfa: Cfa::Gap,
        rbp: Rbp::Same,
    };
    const UNSUPPORTED: Rule = Rule {
        cfa: Cfa::Unsupported,
        rbp: Rbp::Same,
    };

    /// The rule's upper 32 bits of a packed row; `None` if an offset does
    /// not fit (then the row is packed as unsupported).
    fn pack(self) -> Option<u32> {
        fn scaled16(off: i32) -> Option<u32> {
            (off % 8 == 0)
                .then(|| i16::try_from(off / 8).ok())
                .flatten()
                .map(|v| v as u16 as u32)
        }
        fn scaled8(off: i32) -> Option<u32> {
            (off % 8 == 0)
                .then(|| i8::try_from(off / 8).ok())
                .flatten()
                .map(|v| v as u8 as u32)
        }
        let (ct, co, extra) = match self.cfa {
            Cfa::Gap => (0, 0, None),
            Cfa::Rsp(o) => (1, scaled16(o)?, None),
            Cfa::Rbp(o) => (2, scaled16(o)?, None),
            Cfa::Plt { offset, threshold } => (3, scaled16(offset)?, Some(threshold as u32)),
            Cfa::DerefRsp(o) => (4, scaled16(o)?, None),
            Cfa::DerefRbp(o) => (5, scaled16(o)?, None),
            Cfa::Signal => (6, 0, None),
            Cfa::End => (7, 0, None),
            Cfa::Unsupported => (8, 0, None),
        };
        let (rt, ro) = match self.rbp {
            Rbp::Same => (0, 0),
            Rbp::Cfa(o) => (1, scaled8(o)?),
            Rbp::AtRbp(o) => (2, scaled8(o)?),
            Rbp::Lost => (3, 0),
        };
        // The PLT threshold travels in the rbp offset byte (rbp is unchanged).
        let ro = extra.unwrap_or(ro);
        Some(ct | rt << 4 | co << 8 | ro << 24)
    }

    fn unpack(hi: u32) -> Rule {
        let off16 = ((hi >> 8) as u16 as i16 as i32) * 8;
        let off8 = ((hi >> 24) as u8 as i8 as i32) * 8;
        let cfa = match hi & 0xf {
            0 => Cfa::Gap,
            1 => Cfa::Rsp(off16),
            2 => Cfa::Rbp(off16),
            3 => Cfa::Plt {
                offset: off16,
                threshold: (hi >> 24) as u8,
            },
            4 => Cfa::DerefRsp(off16),
            5 => Cfa::DerefRbp(off16),
            6 => Cfa::Signal,
            7 => Cfa::End,
            _ => Cfa::Unsupported,
        };
        let rbp = match (hi >> 4) & 0xf {
            _ if matches!(cfa, Cfa::Plt { .. }) => Rbp::Same,
            0 => Rbp::Same,
            1 => Rbp::Cfa(off8),
            2 => Rbp::AtRbp(off8),
            _ => Rbp::Lost,
        };
        Rule { cfa, rbp }
    }
}

/// Where the CFI came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    /// `.eh_frame`.
    #[default]
    EhFrame,
    /// `.debug_frame` (no `.eh_frame`).
    DebugFrame,
    /// Neither: every address falls back to frame pointers.
    None,
}

/// A loadable PT_LOAD segment, to turn mapped addresses into ELF addresses.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    /// File offset.
    pub offset: u64,
    /// Virtual address.
    pub vaddr: u64,
    /// Bytes in the file.
    pub filesz: u64,
}

/// A binary's unwind table.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Packed rows (see bpf/ember.h), sorted by pc.
    pub rows: Vec<u64>,
    /// ELF virtual address of table pc 0.
    pub base: u64,
    /// The binary's executable segments.
    pub segments: Vec<Segment>,
    /// Where the CFI came from.
    pub source: Source,
    /// FDEs read.
    pub fdes: usize,
    /// Rows whose rule ember cannot follow (unwinding stops there).
    pub unsupported: usize,
}

impl Table {
    /// Reads and reduces the CFI of an ELF file (x86-64 only).
    ///
    /// The file belongs to whoever can write it, so reads are bounded: a
    /// CFI section over [`MAX_CFI_BYTES`] or more than
    /// [`MAX_TABLE_READ_BYTES`] read in all fails the build (counted as a
    /// refusal) before anything that large is allocated.
    pub fn build(file: &File) -> Result<Table> {
        let cache = Bounded {
            cache: ReadCache::new(file),
            used: Cell::new(0),
            refused: Cell::new(false),
        };
        let built = Table::build_from(&cache);
        if cache.refused.get() {
            crate::untrusted::count(What::Binary, Refusal::TooLarge);
            bail!(
                "its unwind information is larger than ember's limit ({} MiB)",
                MAX_CFI_BYTES >> 20
            );
        }
        built
    }

    /// [`build`](Self::build) from an ELF image in memory (the vDSO).
    pub fn build_from_bytes(image: &[u8]) -> Result<Table> {
        Table::build_from(image)
    }

    fn build_from<'d, R: object::ReadRef<'d>>(data: R) -> Result<Table> {
        // The file and section headers only: object's ElfFile would also
        // read the symbol and string tables, which the tables do not need.
        let header = object::elf::FileHeader64::<object::LittleEndian>::parse(data)
            .context("not a 64-bit ELF file")?;
        let endian = header.endian()?;
        if header.e_machine(endian) != object::elf::EM_X86_64 {
            bail!("unwind tables are built for x86-64 only");
        }
        let mut segments = Vec::new();
        for ph in header.program_headers(endian, data)? {
            if ph.p_type(endian) == object::elf::PT_LOAD
                && ph.p_flags(endian) & object::elf::PF_X != 0
            {
                segments.push(Segment {
                    offset: ph.p_offset(endian),
                    vaddr: ph.p_vaddr(endian),
                    filesz: ph.p_filesz(endian),
                });
            }
        }
        let sections = header.sections(endian, data)?;
        let section = |name: &str| {
            sections
                .section_by_name(endian, name.as_bytes())
                .map(|s| s.1)
        };
        let addr = |name: &str| section(name).map(|s| s.sh_addr(endian)).unwrap_or(0);
        let bases = BaseAddresses::default()
            .set_eh_frame_hdr(addr(".eh_frame_hdr"))
            .set_eh_frame(addr(".eh_frame"))
            .set_text(addr(".text"))
            .set_got(addr(".got"));
        let data_of = |name: &str| {
            section(name)
                .and_then(|s| s.data(endian, data).ok())
                .filter(|d| !d.is_empty())
        };

        let mut fdes = Vec::new();
        let source = if let Some(data) = data_of(".eh_frame") {
            let mut sec = EhFrame::new(data, LittleEndian);
            sec.set_address_size(8);
            read_fdes(&sec, &bases, &mut fdes)?;
            Source::EhFrame
        } else if let Some(data) = data_of(".debug_frame") {
            let mut sec = DebugFrame::new(data, LittleEndian);
            sec.set_address_size(8);
            read_fdes(&sec, &bases, &mut fdes)?;
            Source::DebugFrame
        } else {
            Source::None
        };
        let mut t = Table::from_fdes(fdes)?;
        t.segments = segments;
        t.source = source;
        Ok(t)
    }

    /// Merges FDEs (start, end, rows) into one sorted, gap-marked table.
    fn from_fdes(mut fdes: Vec<Fde>) -> Result<Table> {
        fdes.retain(|f| f.end > f.start && !f.rows.is_empty());
        fdes.sort_by_key(|f| f.start);
        let base = fdes.first().map(|f| f.start).unwrap_or(0);
        let mut t = Table {
            base,
            fdes: fdes.len(),
            ..Default::default()
        };
        let mut prev_end: Option<u64> = None;
        for f in &fdes {
            if f.end - base > u32::MAX as u64 {
                break; // beyond 4 GiB of code from the first FDE
            }
            if let Some(end) = prev_end {
                if end < f.start {
                    t.push(end - base, Rule::GAP);
                }
            }
            for &(pc, rule) in &f.rows {
                t.push(pc.max(f.start) - base, rule);
            }
            prev_end = Some(prev_end.map_or(f.end, |e| e.max(f.end)));
        }
        if let Some(end) = prev_end {
            if end - base <= u32::MAX as u64 {
                t.push(end - base, Rule::GAP);
            }
        }
        if t.rows.len() > MAX_ROWS {
            bail!(
                "{} unwind rows: more than the {MAX_ROWS} ember supports per binary",
                t.rows.len()
            );
        }
        Ok(t)
    }

    fn push(&mut self, pc: u64, rule: Rule) {
        let hi = match rule.pack() {
            Some(hi) => hi,
            None => {
                self.unsupported += 1;
                Rule::UNSUPPORTED.pack().unwrap()
            }
        };
        if rule.cfa == Cfa::Unsupported {
            self.unsupported += 1;
        }
        let row = pc | (hi as u64) << 32;
        if let Some(last) = self.rows.last_mut() {
            let last_pc = *last as u32 as u64;
            if last_pc == pc {
                // A later row (or FDE) at the same pc wins.
                *last = row;
                self.dedup_tail();
                return;
            }
            if pc < last_pc {
                // Overlapping FDEs: keep the first, sorted one.
                return;
            }
            if (*last >> 32) as u32 == hi {
                return; // same rule as the row before: merged
            }
        }
        self.rows.push(row);
    }

    fn dedup_tail(&mut self) {
        let n = self.rows.len();
        if n >= 2 && self.rows[n - 1] >> 32 == self.rows[n - 2] >> 32 {
            self.rows.pop();
        }
    }

    /// The page index: per 4 KiB of code from the base, the first and
    /// last row covering it (see bpf/ember.h).
    pub fn page_index(&self) -> Vec<u64> {
        let Some(last) = self.rows.last() else {
            return Vec::new();
        };
        let pages = ((*last as u32) >> PAGE_SHIFT) as u64 + 1;
        // The last row with pc <= x.
        let covering = |x: u64| {
            self.rows
                .partition_point(|r| (*r as u32 as u64) <= x)
                .saturating_sub(1) as u64
        };
        (0..pages)
            .map(|p| {
                let lo = covering(p << PAGE_SHIFT);
                let hi = covering(((p + 1) << PAGE_SHIFT) - 1);
                lo | hi << 32
            })
            .collect()
    }

    /// The rule covering an ELF virtual address, found exactly as the BPF
    /// unwinder finds it (page index, then a search of that page's rows).
    pub fn lookup(&self, vaddr: u64) -> Rule {
        self.lookup_in(&self.page_index(), vaddr)
    }

    /// [`lookup`](Self::lookup) with a precomputed page index.
    pub fn lookup_in(&self, index: &[u64], vaddr: u64) -> Rule {
        let Some(x) = vaddr
            .checked_sub(self.base)
            .filter(|x| *x <= u32::MAX as u64)
        else {
            return Rule::GAP;
        };
        let Some(&span) = index.get((x >> PAGE_SHIFT) as usize) else {
            return Rule::GAP;
        };
        let (mut lo, mut hi) = (span as u32 as usize, (span >> 32) as usize);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if (self.rows[mid] as u32 as u64) <= x {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Rule::unpack((self.rows[lo] >> 32) as u32)
    }

    /// Kernel memory the table takes once loaded (8 bytes a row or page
    /// index entry).
    pub fn bytes(&self) -> u64 {
        (self.rows.len() as u64 + self.pages() as u64) * 8
    }

    /// Entries in the page index.
    pub fn pages(&self) -> u32 {
        self.rows
            .last()
            .map_or(0, |r| ((*r as u32) >> PAGE_SHIFT) + 1)
    }

    /// What stays in userspace once the rows are in the kernel.
    pub fn placement(&self) -> Placement {
        Placement {
            base: self.base,
            segments: self.segments.clone(),
            rows: self.rows.len() as u64,
            pages: self.pages(),
            bytes: self.bytes(),
        }
    }
}

/// A loaded table's facts, without its rows (which live in the kernel):
/// where its code sits in the file, and what it costs.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// The table's pcs are relative to this address.
    pub base: u64,
    /// The binary's executable segments.
    pub segments: Vec<Segment>,
    /// Rows in the kernel.
    pub rows: u64,
    /// Entries in the page index.
    pub pages: u32,
    /// Kernel bytes (rows and page index).
    pub bytes: u64,
}

impl Placement {
    /// The bias to store for a mapping of this binary at `start` with file
    /// offset `offset`: table pc = address - bias. None if no executable
    /// segment holds that offset.
    pub fn bias(&self, start: u64, offset: u64) -> Option<u64> {
        let seg = self.segments.iter().find(|s| {
            let page_start = s.offset & !0xfff;
            page_start <= offset && offset < s.offset + s.filesz.max(1)
        })?;
        // address -> file offset -> vaddr -> table pc
        Some(
            start
                .wrapping_sub(offset)
                .wrapping_add(seg.offset)
                .wrapping_sub(seg.vaddr)
                .wrapping_add(self.base),
        )
    }
}

/// A file read through object's cache, refusing any single read over
/// [`MAX_CFI_BYTES`] and more than [`MAX_TABLE_READ_BYTES`] in all.
struct Bounded<'f> {
    cache: ReadCache<&'f File>,
    used: Cell<u64>,
    refused: Cell<bool>,
}

impl<'a, 'f> ReadRef<'a> for &'a Bounded<'f> {
    fn len(self) -> std::result::Result<u64, ()> {
        (&self.cache).len()
    }

    fn read_bytes_at(self, offset: u64, size: u64) -> std::result::Result<&'a [u8], ()> {
        let used = self.used.get().saturating_add(size);
        if size > MAX_CFI_BYTES || used > MAX_TABLE_READ_BYTES {
            self.refused.set(true);
            return Err(());
        }
        self.used.set(used);
        (&self.cache).read_bytes_at(offset, size)
    }

    fn read_bytes_at_until(
        self,
        range: std::ops::Range<u64>,
        delimiter: u8,
    ) -> std::result::Result<&'a [u8], ()> {
        // object caps strings at 4 KiB itself.
        (&self.cache).read_bytes_at_until(range, delimiter)
    }
}

struct Fde {
    start: u64,
    end: u64,
    rows: Vec<(u64, Rule)>,
}

fn read_fdes<'a, S>(section: &S, bases: &BaseAddresses, out: &mut Vec<Fde>) -> Result<()>
where
    S: UnwindSection<EndianSlice<'a, LittleEndian>>,
{
    let mut ctx = Box::new(UnwindContext::new());
    let mut entries = section.entries(bases);
    let mut rows = 0usize;
    loop {
        let entry = match entries.next() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            // A malformed entry ends the walk; what was read stays usable.
            Err(_) => break,
        };
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o)) else {
            continue;
        };
        let signal = fde.is_signal_trampoline();
        let mut f = Fde {
            start: fde.initial_address(),
            end: fde.end_address(),
            rows: Vec::new(),
        };
        let Ok(mut table) = fde.rows(section, bases, &mut ctx) else {
            continue;
        };
        while let Ok(Some(row)) = table.next_row() {
            let rule = if signal {
                Rule {
                    cfa: Cfa::Signal,
                    rbp: Rbp::Same,
                }
            } else {
                decode(row, section)
            };
            f.rows.push((row.start_address(), rule));
        }
        rows += f.rows.len();
        if rows > MAX_ROWS {
            bail!("more than the {MAX_ROWS} unwind rows ember supports per binary");
        }
        out.push(f);
    }
    Ok(())
}

fn decode<'a, S>(row: &gimli::UnwindTableRow<usize>, section: &S) -> Rule
where
    S: UnwindSection<EndianSlice<'a, LittleEndian>>,
{
    let expr_bytes = |e: &gimli::UnwindExpression<usize>| -> Option<&'a [u8]> {
        e.get(section).ok().map(|x| x.0.slice())
    };
    let ra = row.register(RA);
    match ra {
        Some(RegisterRule::Undefined) => {
            return Rule {
                cfa: Cfa::End,
                rbp: Rbp::Same,
            }
        }
        Some(RegisterRule::Offset(-8)) => {}
        _ => return Rule::UNSUPPORTED,
    }
    let cfa = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            match (*register, i32::try_from(*offset)) {
                (RSP, Ok(o)) => Cfa::Rsp(o),
                (RBP, Ok(o)) => Cfa::Rbp(o),
                _ => Cfa::Unsupported,
            }
        }
        CfaRule::Expression(e) => expr_bytes(e).map_or(Cfa::Unsupported, cfa_expression),
    };
    let rbp = match row.register(RBP) {
        None | Some(RegisterRule::Undefined) | Some(RegisterRule::SameValue) => Rbp::Same,
        Some(RegisterRule::Offset(o)) => i32::try_from(o).map_or(Rbp::Lost, Rbp::Cfa),
        Some(RegisterRule::Expression(e)) => match expr_bytes(&e).and_then(breg_only) {
            Some((6, o)) => Rbp::AtRbp(o),
            _ => Rbp::Lost,
        },
        Some(_) => Rbp::Lost,
    };
    Rule { cfa, rbp }
}

/// The CFA expressions real x86-64 code uses: PLT stubs and stack
/// realignment.
fn cfa_expression(b: &[u8]) -> Cfa {
    // DW_OP_breg7 off; DW_OP_breg16 0; lit15; and; litN; ge; lit3; shl; plus
    if let Some((7, offset, rest)) = breg(b) {
        if let Some((16, 0, [0x3f, 0x1a, lit @ 0x30..=0x4f, 0x2a, 0x33, 0x24, 0x22])) = breg(rest) {
            return Cfa::Plt {
                offset,
                threshold: lit - 0x30,
            };
        }
        if rest == [0x06] {
            return Cfa::DerefRsp(offset);
        }
    }
    if let Some((6, offset, [0x06])) = breg(b) {
        return Cfa::DerefRbp(offset);
    }
    Cfa::Unsupported
}

/// `DW_OP_bregN off` alone.
fn breg_only(b: &[u8]) -> Option<(u8, i32)> {
    match breg(b)? {
        (r, o, []) => Some((r, o)),
        _ => None,
    }
}

/// Parses a leading `DW_OP_bregN sleb` (N < 32) or `DW_OP_bregx N sleb`.
fn breg(b: &[u8]) -> Option<(u8, i32, &[u8])> {
    let (&op, rest) = b.split_first()?;
    let (reg, rest) = match op {
        0x70..=0x8f => (op - 0x70, rest),
        0x92 => {
            let (r, rest) = uleb(rest)?;
            (u8::try_from(r).ok()?, rest)
        }
        _ => return None,
    };
    let (off, rest) = sleb(rest)?;
    Some((reg, i32::try_from(off).ok()?, rest))
}

fn uleb(b: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, &b[i + 1..]));
        }
    }
    None
}

fn sleb(b: &[u8]) -> Option<(i64, &[u8])> {
    let mut v = 0i64;
    let mut shift = 0;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= ((byte & 0x7f) as i64) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            if shift < 64 && byte & 0x40 != 0 {
                v |= -1i64 << shift;
            }
            return Some((v, &b[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_round_trip_through_the_packed_row() {
        for rule in [
            Rule::GAP,
            Rule {
                cfa: Cfa::Rsp(8),
                rbp: Rbp::Same,
            },
            Rule {
                cfa: Cfa::Rbp(16),
                rbp: Rbp::Cfa(-16),
            },
            Rule {
                cfa: Cfa::Rsp(0x10040),
                rbp: Rbp::Cfa(-48),
            },
            Rule {
                cfa: Cfa::Plt {
                    offset: 8,
                    threshold: 11,
                },
                rbp: Rbp::Same,
            },
            Rule {
                cfa: Cfa::DerefRbp(-8),
                rbp: Rbp::AtRbp(0),
            },
            Rule {
                cfa: Cfa::Signal,
                rbp: Rbp::Same,
            },
            Rule {
                cfa: Cfa::End,
                rbp: Rbp::Same,
            },
        ] {
            assert_eq!(Rule::unpack(rule.pack().unwrap()), rule, "{rule:?}");
        }
        // Offsets that are not multiples of 8 cannot be packed.
        assert_eq!(
            Rule {
                cfa: Cfa::Rsp(12),
                rbp: Rbp::Same
            }
            .pack(),
            None
        );
    }

    #[test]
    fn recognises_the_plt_and_realignment_expressions() {
        // .plt: rsp + 8 + ((rip & 15) >= 11) << 3
        let plt = [
            0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22,
        ];
        assert_eq!(
            cfa_expression(&plt),
            Cfa::Plt {
                offset: 8,
                threshold: 11
            }
        );
        // DW_OP_breg6 -8; DW_OP_deref
        assert_eq!(cfa_expression(&[0x76, 0x78, 0x06]), Cfa::DerefRbp(-8));
        assert_eq!(cfa_expression(&[0x76, 0x78]), Cfa::Unsupported);
        assert_eq!(breg_only(&[0x76, 0x00]), Some((6, 0)));
    }

    #[test]
    fn gaps_between_fdes_fall_back_and_equal_rules_merge() {
        let r = |o| Rule {
            cfa: Cfa::Rsp(o),
            rbp: Rbp::Same,
        };
        let t = Table::from_fdes(vec![
            Fde {
                start: 0x2000,
                end: 0x2010,
                rows: vec![(0x2000, r(8)), (0x2004, r(16)), (0x2008, r(16))],
            },
            Fde {
                start: 0x1000,
                end: 0x1020,
                rows: vec![(0x1000, r(8)), (0x1001, r(16))],
            },
            Fde {
                start: 0x1020,
                end: 0x1030,
                rows: vec![(0x1020, r(16))],
            },
        ])
        .unwrap();
        assert_eq!(t.base, 0x1000);
        assert_eq!(t.lookup(0x0fff), Rule::GAP);
        assert_eq!(t.lookup(0x1000), r(8));
        assert_eq!(t.lookup(0x102f), r(16));
        assert_eq!(t.lookup(0x1030), Rule::GAP);
        assert_eq!(t.lookup(0x1fff), Rule::GAP);
        assert_eq!(t.lookup(0x2000), r(8));
        assert_eq!(t.lookup(0x200f), r(16));
        assert_eq!(t.lookup(0x2010), Rule::GAP);
        // 0x1001 and 0x1020 share rsp+16; 0x2008 repeats 0x2004.
        assert_eq!(t.rows.len(), 6);
    }
}
