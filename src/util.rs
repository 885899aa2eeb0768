//! Small pieces shared by the commands (record, agent, query): duration and
//! size values as users write them, the host name, and text from outside
//! made safe to print. Every parser here is total: any input gives a value
//! or an error, never a panic, and arithmetic is checked.

use std::fmt;
use std::io::Read;
use std::time::Duration;

use anyhow::{bail, Result};

/// Nothing ember accepts is longer than this: it keeps every duration's
/// nanoseconds inside a `u64` and any `Instant`/`SystemTime` sum valid.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

const NS_PER_SEC: u128 = 1_000_000_000;

/// Accepted ranges of the durations, sizes and counts users give, shared by
/// `ember record` flags and the agent's config.
pub mod limits {
    use std::time::Duration;

    /// `ember record --duration`.
    pub const RECORD_DURATION: (Duration, Duration) =
        (Duration::from_millis(1), Duration::from_secs(7 * 86_400));
    /// `window`.
    pub const WINDOW: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));
    /// `store.retention`.
    pub const RETENTION: (Duration, Duration) =
        (Duration::from_secs(60), Duration::from_secs(3650 * 86_400));
    /// `store.max_size`.
    pub const STORE_SIZE: (u64, u64) = (1 << 20, 16 << 40);
    /// `queue.max_size`.
    pub const QUEUE_SIZE: (u64, u64) = (1 << 10, 4 << 30);
    /// `sampler.unwind_memory` (and `ember record --unwind-memory`).
    pub const UNWIND_MEMORY: (u64, u64) = (1 << 20, 64 << 30);
    /// `push.timeout`.
    pub const PUSH_TIMEOUT: (Duration, Duration) =
        (Duration::from_millis(100), Duration::from_secs(600));
    /// `sampler.count_map_size` (and `ember record --count-map-size`).
    pub const COUNT_MAP: (u32, u32) = (64, 1 << 20);
    /// `sampler.stack_map_size` (and `ember record --stack-map-size`).
    pub const STACK_MAP: (u32, u32) = (64, 1 << 18);
    /// `sampler.max_depth` (and `ember record --max-depth`): user frames
    /// walked with unwind tables.
    pub const MAX_DEPTH: (u32, u32) = (1, crate::sample::abi::MAX_USER_DEPTH as u32);
}

/// Why a duration or size did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not a number followed by a known unit.
    Syntax,
    /// Zero (every duration and size ember takes must be positive).
    Zero,
    /// Larger than anything ember can represent.
    TooLarge,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseError::Syntax => "not a valid value",
            ParseError::Zero => "zero",
            ParseError::TooLarge => "too large",
        })
    }
}

impl std::error::Error for ParseError {}

/// Splits `12.5MiB` into the number (`12`, `5`) and the unit (`MiB`), with
/// optional blanks around and between. The number needs at least one digit
/// and at most one dot.
fn split_number(s: &str) -> Result<(&str, &str, &str), ParseError> {
    let t = s.trim();
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(end);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(ParseError::Syntax);
    }
    Ok((int, frac, unit.trim_start()))
}

/// `int.frac` times `unit` (an integer), checked, rounded down; `None` past
/// `limit`.
fn scale(int: &str, frac: &str, unit: u128, limit: u128) -> Option<u128> {
    let mut whole: u128 = 0;
    for b in int.bytes() {
        whole = whole.checked_mul(10)?.checked_add(u128::from(b - b'0'))?;
        if whole > limit {
            return None;
        }
    }
    let mut total = whole.checked_mul(unit)?;
    // Twenty digits of fraction are far below one unit of resolution for
    // every unit used here; the rest only needs to be digits.
    let digits = &frac[..frac.len().min(20)];
    if !digits.is_empty() {
        let mut f: u128 = 0;
        for b in digits.bytes() {
            f = f * 10 + u128::from(b - b'0');
        }
        let denom = 10u128.pow(digits.len() as u32);
        total = total.checked_add(f.checked_mul(unit)? / denom)?;
    }
    (total <= limit).then_some(total)
}

/// Parses `30s`, `2m`, `1h`, `500ms`, `1d`, `1.5h` or a bare number of
/// seconds (`90`, `0.5`). Units: `ms`; `s`, `sec`, `secs`; `m`, `min`,
/// `mins`; `h`; `d`. Anything over [`MAX_DURATION`] is `TooLarge`.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, ParseError> {
    let (int, frac, unit) = split_number(s)?;
    let unit_ns: u128 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "" | "s" | "sec" | "secs" => NS_PER_SEC,
        "m" | "min" | "mins" => 60 * NS_PER_SEC,
        "h" => 3600 * NS_PER_SEC,
        "d" => 86_400 * NS_PER_SEC,
        _ => return Err(ParseError::Syntax),
    };
    let ns = scale(int, frac, unit_ns, MAX_DURATION.as_nanos()).ok_or(ParseError::TooLarge)?;
    if ns == 0 {
        return Err(ParseError::Zero);
    }
    // ns <= MAX_DURATION's nanoseconds, which fit in u64.
    Ok(Duration::from_nanos(
        u64::try_from(ns).map_err(|_| ParseError::TooLarge)?,
    ))
}

/// Parses `64MiB`, `1GiB`, `500MB`, `1.5GiB` or a bare number of bytes.
/// Units: `B`; `K`/`k`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB` (powers of
/// 1024); `KB`/`kB`, `MB`, `GB`, `TB` (powers of 1000). At most `u64::MAX`.
pub fn parse_size(s: &str) -> std::result::Result<u64, ParseError> {
    let (int, frac, unit) = split_number(s)?;
    let mult: u128 = match unit {
        "" | "B" => 1,
        "K" | "k" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(ParseError::Syntax),
    };
    let n = scale(int, frac, mult, u128::from(u64::MAX)).ok_or(ParseError::TooLarge)?;
    if n == 0 {
        return Err(ParseError::Zero);
    }
    u64::try_from(n).map_err(|_| ParseError::TooLarge)
}

/// A duration in the largest unit that states it exactly (`7d`, `90s`,
/// `1500ms`).
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    for (unit, name) in [
        (86_400 * NS_PER_SEC, "d"),
        (3600 * NS_PER_SEC, "h"),
        (60 * NS_PER_SEC, "m"),
        (NS_PER_SEC, "s"),
        (1_000_000, "ms"),
    ] {
        if ns >= unit && ns % unit == 0 {
            return format!("{}{name}", ns / unit);
        }
    }
    format!("{ns}ns")
}

/// A size in the largest binary unit that states it exactly (`64MiB`).
pub fn format_size(b: u64) -> String {
    for (shift, name) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if b >= 1 << shift && b % (1 << shift) == 0 {
            return format!("{}{name}", b >> shift);
        }
    }
    format!("{b}B")
}

/// Parses a duration a user gave for `subject` (`--duration "2h"`,
/// `store.retention = "24h"`) and checks it is within `min..=max`; every
/// error is one sentence naming the subject and the accepted range.
pub fn duration_in(subject: &str, raw: &str, min: Duration, max: Duration) -> Result<Duration> {
    value_in(
        subject,
        parse_duration(raw),
        (min, max),
        format_duration,
        "is not a valid duration; use a number with a unit (ms, s, m, h or d) such as 30s, 2m, 1h or 500ms",
    )
}

/// [`duration_in`] for sizes (`queue.max_size = "64MiB"`).
pub fn size_in(subject: &str, raw: &str, min: u64, max: u64) -> Result<u64> {
    value_in(
        subject,
        parse_size(raw),
        (min, max),
        format_size,
        "is not a size; use a number with a unit (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB) such as 64MiB or 1GiB",
    )
}

/// Checks a parsed value against its range, with one error sentence per
/// way it can be wrong.
fn value_in<T: PartialOrd + Copy>(
    subject: &str,
    parsed: std::result::Result<T, ParseError>,
    (min, max): (T, T),
    format: fn(T) -> String,
    syntax: &str,
) -> Result<T> {
    let range = format!("use {} to {}", format(min), format(max));
    match parsed {
        Ok(v) if min <= v && v <= max => Ok(v),
        Ok(_) | Err(ParseError::TooLarge) => bail!("{subject} is out of range; {range}"),
        Err(ParseError::Zero) => bail!("{subject} must be greater than zero; {range}"),
        Err(ParseError::Syntax) => bail!(
            "{subject} {syntax}, from {} to {}",
            format(min),
            format(max)
        ),
    }
}

/// `raw` quoted for an error message: escaped, and at most 64 characters.
pub fn quote(raw: &str) -> String {
    let short: String = raw.chars().take(64).collect();
    if short.len() < raw.len() {
        format!("{:?}…", short)
    } else {
        format!("{short:?}")
    }
}

/// This host's name (read bounded; `localhost` if unreadable or empty).
pub fn hostname() -> String {
    let mut s = String::new();
    let ok = std::fs::File::open("/proc/sys/kernel/hostname")
        .and_then(|f| f.take(256).read_to_string(&mut s))
        .is_ok();
    let name = printable(s.trim(), 64);
    if !ok || name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// A name taken from a profiled program (its command name, symbols, perf
/// map, file names) with control characters replaced by U+FFFD, so no
/// output can be broken by it: an SVG stays well-formed XML, a terminal
/// receives no escape sequences. Borrows when nothing needs replacing.
pub fn clean_name(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        std::borrow::Cow::Owned(
            s.chars()
                .map(|c| if c.is_control() { '\u{fffd}' } else { c })
                .collect(),
        )
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Text from outside (a server's reply, a header, an error) made safe for a
/// log line: ANSI escape sequences removed, other control characters and
/// Unicode direction overrides shown as spaces, runs of blanks collapsed,
/// at most `max` characters (then `…`).
pub fn printable(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut n = 0;
    let mut chars = s.chars().peekable();
    let mut last_space = false;
    while let Some(c) = chars.next() {
        let c = match c {
            '\u{1b}' | '\u{9b}' => {
                skip_escape(c, &mut chars);
                continue;
            }
            c if c.is_control()
                || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}') =>
            {
                ' '
            }
            c => c,
        };
        if c == ' ' {
            if last_space {
                continue;
            }
            last_space = true;
        } else {
            last_space = false;
        }
        if n == max {
            out.push('…');
            return out.trim().to_string();
        }
        out.push(c);
        n += 1;
    }
    out.trim().to_string()
}

/// Skips one escape sequence after ESC (or the 8-bit CSI): CSI `[ ... final`,
/// OSC/DCS/SOS/PM/APC strings up to BEL or ST, or one more character.
fn skip_escape(first: char, it: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    let kind = if first == '\u{9b}' {
        '['
    } else {
        match it.next() {
            Some(k) => k,
            None => return,
        }
    };
    match kind {
        '[' => {
            // Parameters and intermediates, then one final byte @..~.
            for c in it.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
        }
        ']' | 'P' | 'X' | '^' | '_' => {
            while let Some(c) = it.next() {
                if c == '\u{7}' || c == '\u{9c}' {
                    break;
                }
                if c == '\u{1b}' && it.peek() == Some(&'\\') {
                    it.next();
                    break;
                }
            }
        }
        _ => {}
    }
}

/// A URL with any user information and query replaced by `<redacted>`, for
/// messages and metrics; text that is not a URL is shown only up to its
/// scheme and host.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some(x) => x,
        None => {
            let host = url.rsplit('@').next().unwrap_or("");
            return printable(host.split(['?', '#']).next().unwrap_or(""), 100);
        }
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = match authority.rsplit_once('@') {
        Some((_, h)) => format!("<redacted>@{h}"),
        None => authority.to_string(),
    };
    let tail = match tail.find(['?', '#']) {
        Some(i) => format!("{}?<redacted>", &tail[..i]),
        None => tail.to_string(),
    };
    printable(&format!("{scheme}://{host}{tail}"), 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |s: &str| parse_duration(s);
        assert_eq!(d("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(d("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(d(" 90 "), Ok(Duration::from_secs(90)));
        assert_eq!(d("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(d(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(d("2 min"), Ok(Duration::from_secs(120)));
        assert_eq!(d("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(d("0s"), Err(ParseError::Zero));
        assert_eq!(d("0.0000000001s"), Err(ParseError::Zero));
        for bad in ["abc", "", ".", "1..2s", "-1s", "10y", "1e3s", "1h30m", "s"] {
            assert_eq!(d(bad), Err(ParseError::Syntax), "{bad}");
        }
        assert_eq!(d("99999999999999999h"), Err(ParseError::TooLarge));
        assert_eq!(d(&"9".repeat(100)), Err(ParseError::TooLarge));
        assert_eq!(d("36500d"), Ok(MAX_DURATION));
        assert_eq!(d("36501d"), Err(ParseError::TooLarge));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("16 EiB"), Err(ParseError::Syntax));
        assert_eq!(parse_size("16777216TiB"), Err(ParseError::TooLarge));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(
            parse_size("18446744073709551616"),
            Err(ParseError::TooLarge)
        );
        assert_eq!(parse_size("0"), Err(ParseError::Zero));
        assert_eq!(parse_size("lots"), Err(ParseError::Syntax));
    }

    #[test]
    fn ranges_are_one_sentence() {
        let e = duration_in(
            "store.retention = \"1000000d\"",
            "1000000d",
            Duration::from_secs(60),
            Duration::from_secs(3650 * 86400),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "store.retention = \"1000000d\" is out of range; use 1m to 3650d"
        );
        let e = size_in("queue.max_size = \"1B\"", "1B", 1024, 8 << 30)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "queue.max_size = \"1B\" is out of range; use 1KiB to 8GiB"
        );
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(quote(&"x".repeat(100)).chars().count(), 67);
    }

    #[test]
    fn printable_text() {
        assert_eq!(
            printable("\u{1b}[31mred\u{1b}[0m\nnext\r\tline", 200),
            "red next line"
        );
        assert_eq!(printable("\u{1b}]0;title\u{7}ok", 200), "ok");
        assert_eq!(printable("a\u{202e}b\u{0}c", 200), "a b c");
        assert_eq!(printable(&"é".repeat(300), 200).chars().count(), 201);
        assert_eq!(printable("\u{1b}", 10), "");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("http://user:pass@host:4040/p?token=x"),
            "http://<redacted>@host:4040/p?<redacted>"
        );
        assert_eq!(redact_url("https://h/x"), "https://h/x");
        assert_eq!(redact_url("user:pw@host"), "host");
    }
}
