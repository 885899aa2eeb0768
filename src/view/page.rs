//! The agent's HTML page: server-rendered, no script of its own, no
//! resource from anywhere else. Its state is all in the URL's query
//! ([`PageQuery`]), so a view can be shared by its link; the flamegraph is
//! inferno's interactive SVG (search, click-to-zoom), embedded from the
//! agent's `/flamegraph.svg` with the same query.
//!
//! Everything put into the page is escaped ([`esc`] for text and
//! attributes, [`enc`] inside URLs): function names, labels and the query
//! itself come from outside.

use std::fmt::Write as _;
use std::time::Duration;

use super::diff::Change;
use super::table::{FunctionTable, Sort};
use crate::util;

/// Longest query string read; longer ones are refused.
pub const MAX_QUERY_BYTES: usize = 8192;
/// Most `label=` filters.
pub const MAX_LABELS: usize = 16;
/// Longest value of a text parameter (service, label, search), in bytes.
pub const MAX_VALUE_BYTES: usize = 512;
/// Rows of the top-functions table.
pub const TABLE_ROWS: usize = 100;
/// Longest range or baseline offset.
pub const MAX_RANGE: Duration = Duration::from_secs(366 * 86_400);

/// What the page shows: the parsed, checked query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageQuery {
    /// The range starts this long ago (`since`, default 5m).
    pub since: Duration,
    /// The range ends this long ago (`until`; `None`: now, including the
    /// window being collected).
    pub until: Option<Duration>,
    /// Only this `service_name`.
    pub service: Option<String>,
    /// Only this process.
    pub pid: Option<u32>,
    /// Only targets with these labels.
    pub labels: Vec<(String, String)>,
    /// Search term: highlighted in the flamegraph, filters the table.
    pub search: Option<String>,
    /// Compare with a baseline of the same length starting this long ago.
    pub diff_since: Option<Duration>,
    /// Table order.
    pub sort: Sort,
}

impl Default for PageQuery {
    fn default() -> Self {
        PageQuery {
            since: Duration::from_secs(300),
            until: None,
            service: None,
            pid: None,
            labels: Vec::new(),
            search: None,
            diff_since: None,
            sort: Sort::SelfTime,
        }
    }
}

/// Decodes `%XX` and `+` in a query component; `None` for invalid
/// escapes or invalid UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes everything but unreserved characters.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters have no business in a name on a page.
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

fn duration(key: &str, v: &str) -> Result<Duration, String> {
    // The value is not echoed: it is the client's own, and may be markup.
    let d = util::parse_duration(v)
        .map_err(|_| format!("{key} must be a duration such as 30s, 5m, 2h or 7d"))?;
    // Whole milliseconds, so the URL a view writes reads back the same.
    let d = Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    if d.is_zero() || d > MAX_RANGE {
        return Err(format!("{key} must be between 1ms and 366d"));
    }
    Ok(d)
}

fn text(key: &str, v: String) -> Result<Option<String>, String> {
    if v.len() > MAX_VALUE_BYTES {
        return Err(format!("{key} is longer than {MAX_VALUE_BYTES} bytes"));
    }
    Ok((!v.is_empty()).then_some(v))
}

impl PageQuery {
    /// Parses a query string. Unknown parameters are ignored (inferno's
    /// script adds its own to the flamegraph's URL); malformed ones are an
    /// error sentence for a 400.
    pub fn parse(query: &str) -> Result<PageQuery, String> {
        if query.len() > MAX_QUERY_BYTES {
            return Err(format!(
                "the query string is longer than {MAX_QUERY_BYTES} bytes"
            ));
        }
        let mut q = PageQuery::default();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = percent_decode(v).ok_or_else(|| {
                "the query string has an invalid %-escape or is not UTF-8".to_string()
            })?;
            match k {
                "since" if !v.is_empty() => q.since = duration("since", &v)?,
                "until" if !v.is_empty() && v != "now" => q.until = Some(duration("until", &v)?),
                "diff_since" if !v.is_empty() => q.diff_since = Some(duration("diff_since", &v)?),
                "service" => q.service = text("service", v)?,
                "q" => q.search = text("q", v)?,
                "pid" if !v.is_empty() => {
                    q.pid = Some(v.parse().map_err(|_| {
                        "pid must be a process id (a decimal number), such as pid=1234".to_string()
                    })?)
                }
                "label" if !v.is_empty() => {
                    if q.labels.len() >= MAX_LABELS {
                        return Err(format!("at most {MAX_LABELS} label filters"));
                    }
                    let v = text("label", v)?.unwrap_or_default();
                    let (lk, lv) = v
                        .split_once('=')
                        .ok_or_else(|| "label must look like key=value".to_string())?;
                    q.labels.push((lk.to_string(), lv.to_string()));
                }
                "sort" => {
                    q.sort = match v.as_str() {
                        "" | "self" => Sort::SelfTime,
                        "total" => Sort::Total,
                        _ => return Err("sort must be self or total".into()),
                    }
                }
                _ => {}
            }
        }
        if q.until.is_some_and(|u| u >= q.since) {
            return Err(
                "until must be less long ago than since (the range is since ago to until ago)"
                    .into(),
            );
        }
        if let Some(d) = q.diff_since {
            if d <= q.range_len() {
                return Err("diff_since must reach further back than the range is long (the baseline starts diff_since ago and is as long as the range)".into());
            }
        }
        Ok(q)
    }

    /// How long the range is.
    pub fn range_len(&self) -> Duration {
        self.since - self.until.unwrap_or_default()
    }

    /// The query string of this view, without the leading `?`: parsing it
    /// gives this view back.
    pub fn to_query(&self) -> String {
        let mut parts = vec![format!("since={}", util::format_duration(self.since))];
        if let Some(u) = self.until {
            parts.push(format!("until={}", util::format_duration(u)));
        }
        if let Some(s) = &self.service {
            parts.push(format!("service={}", enc(s)));
        }
        if let Some(p) = self.pid {
            parts.push(format!("pid={p}"));
        }
        for (k, v) in &self.labels {
            parts.push(format!("label={}", enc(&format!("{k}={v}"))));
        }
        if let Some(s) = &self.search {
            parts.push(format!("q={}", enc(s)));
        }
        if let Some(d) = self.diff_since {
            parts.push(format!("diff_since={}", util::format_duration(d)));
        }
        if self.sort == Sort::Total {
            parts.push("sort=total".into());
        }
        parts.join("&")
    }

    /// A link to this view with something changed.
    fn link(&self, f: impl FnOnce(&mut PageQuery)) -> String {
        let mut q = self.clone();
        f(&mut q);
        format!("/?{}", q.to_query())
    }

    /// What is shown, in words.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = &self.service {
            parts.push(format!("service {s}"));
        }
        if let Some(p) = self.pid {
            parts.push(format!("pid {p}"));
        }
        for (k, v) in &self.labels {
            parts.push(format!("{k}={v}"));
        }
        let what = if parts.is_empty() {
            "all processes".to_string()
        } else {
            parts.join(", ")
        };
        match self.until {
            None => format!("{what}, last {}", util::format_duration(self.since)),
            Some(u) => format!(
                "{what}, from {} ago to {} ago",
                util::format_duration(self.since),
                util::format_duration(u)
            ),
        }
    }
}

/// What a page is rendered from.
pub struct PageData<'a> {
    /// The host's name.
    pub node: &'a str,
    /// The view.
    pub query: &'a PageQuery,
    /// The function table of the range, sorted and filtered.
    pub table: &'a FunctionTable,
    /// Stored windows merged.
    pub windows: usize,
    /// The window being collected was included.
    pub current: bool,
    /// With a baseline: the changed functions, and the baseline's samples.
    pub diff: Option<(&'a [Change], u64)>,
    /// Services seen in the store, offered in the service field.
    pub services: &'a [String],
    /// A note for the user (the store is disabled, the snapshot timed out).
    pub notes: &'a [String],
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1em 2em;color:#222}\
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.1em;margin:1.2em 0 .4em}\
form{display:flex;flex-wrap:wrap;gap:.5em 1em;align-items:end;background:#f4f4f4;padding:.6em;border-radius:4px}\
label{display:flex;flex-direction:column;font-size:.85em;color:#555}\
input,select{font:inherit;padding:2px 4px}input{width:9em}\
nav a,p.links a{margin-right:.8em}\
table{border-collapse:collapse;font-variant-numeric:tabular-nums}\
td,th{padding:2px 8px;text-align:right;border-bottom:1px solid #eee}\
td.fn,th.fn{text-align:left;font-family:ui-monospace,monospace;word-break:break-all}\
.up{color:#b00}.down{color:#00b}.note{color:#a60}\
object{width:100%;min-height:300px;border:1px solid #ddd}\
.scroll{max-height:24em;overflow:auto;display:inline-block;border:1px solid #eee}\
thead th{position:sticky;top:0;background:#fff}";

/// Renders the page.
pub fn render(d: &PageData) -> String {
    let q = d.query;
    let mut h = String::with_capacity(16 << 10);
    let title = format!("ember · {}", d.node);
    let _ = writeln!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{}</title><style>{STYLE}</style></head><body>",
        esc(&title)
    );
    let _ = writeln!(
        h,
        "<header><h1>ember on {}</h1><p id=\"summary\">{} · {} samples · {} stored window{}{}</p></header>",
        esc(d.node),
        esc(&q.describe()),
        d.table.samples,
        d.windows,
        if d.windows == 1 { "" } else { "s" },
        if d.current {
            " and the window being collected"
        } else {
            ""
        }
    );
    for n in d.notes {
        let _ = writeln!(h, "<p class=\"note\">{}</p>", esc(n));
    }
    // The form: a GET, so the URL is the state.
    let field = |name: &str, label: &str, value: &str, extra: &str| {
        format!(
            "<label>{label}<input name=\"{name}\" value=\"{}\"{extra}></label>",
            esc(value)
        )
    };
    h.push_str("<form method=\"get\" action=\"/\">");
    h.push_str(&field(
        "since",
        "from (ago)",
        &util::format_duration(q.since),
        " list=\"ranges\" required",
    ));
    h.push_str(&field(
        "until",
        "to (ago)",
        &q.until
            .map(util::format_duration)
            .unwrap_or_else(|| "now".into()),
        "",
    ));
    h.push_str(&field(
        "service",
        "service",
        q.service.as_deref().unwrap_or(""),
        " list=\"services\"",
    ));
    h.push_str(&field(
        "pid",
        "pid",
        &q.pid.map(|p| p.to_string()).unwrap_or_default(),
        " inputmode=\"numeric\"",
    ));
    for (k, v) in &q.labels {
        h.push_str(&field("label", "label", &format!("{k}={v}"), ""));
    }
    h.push_str(&field("label", "label", "", " placeholder=\"key=value\""));
    h.push_str(&field("q", "search", q.search.as_deref().unwrap_or(""), ""));
    h.push_str(&field(
        "diff_since",
        "compare with (ago)",
        &q.diff_since.map(util::format_duration).unwrap_or_default(),
        " placeholder=\"e.g. 1h\"",
    ));
    let _ = write!(
        h,
        "<label>sort<select name=\"sort\"><option value=\"self\"{}>self</option><option value=\"total\"{}>total</option></select></label>",
        if q.sort == Sort::SelfTime { " selected" } else { "" },
        if q.sort == Sort::Total { " selected" } else { "" }
    );
    h.push_str("<button type=\"submit\">show</button> <a href=\"/\">reset</a></form>\n");
    h.push_str("<datalist id=\"ranges\">");
    for r in ["1m", "5m", "15m", "1h", "6h", "24h", "7d"] {
        let _ = write!(h, "<option value=\"{r}\">");
    }
    h.push_str("</datalist><datalist id=\"services\">");
    for s in d.services {
        let _ = write!(h, "<option value=\"{}\">", esc(s));
    }
    h.push_str("</datalist>\n<nav id=\"ranges-quick\">last: ");
    for (label, secs) in [
        ("5m", 300),
        ("15m", 900),
        ("1h", 3600),
        ("6h", 21600),
        ("24h", 86400),
    ] {
        let link = q.link(|q| {
            q.since = Duration::from_secs(secs);
            q.until = None;
            q.diff_since = q.diff_since.filter(|&d| d > q.range_len());
        });
        let _ = write!(h, "<a href=\"{}\">{label}</a>", esc(&link));
    }
    h.push_str("</nav>\n");
    let query = q.to_query();
    let _ = writeln!(
        h,
        "<p class=\"links\"><a id=\"download\" href=\"/profile.pb.gz?{0}\" download=\"ember.pb.gz\">download pprof</a>\
<a href=\"/flamegraph.svg?{0}\">open the flamegraph alone</a><a id=\"share\" href=\"/?{0}\">link to this view</a></p>",
        esc(&query)
    );
    let sort_link = |s: Sort| esc(&q.link(|q| q.sort = s));
    let _ = writeln!(
        h,
        "<h2>Top functions{}</h2><div class=\"scroll\"><table id=\"top-functions\"><thead><tr>\
<th><a href=\"{}\">self</a></th><th>self samples</th><th><a href=\"{}\">total</a></th><th>total samples</th><th class=\"fn\">function</th></tr></thead><tbody>",
        match &q.search {
            Some(s) => format!(" matching “{}”", esc(s)),
            None => String::new(),
        },
        sort_link(Sort::SelfTime),
        sort_link(Sort::Total)
    );
    for r in d.table.rows.iter().take(TABLE_ROWS) {
        let link = q.link(|q| q.search = Some(r.name.clone()));
        let _ = writeln!(
            h,
            "<tr><td>{:.2}%</td><td>{}</td><td>{:.2}%</td><td>{}</td><td class=\"fn\"><a href=\"{}\">{}</a>{}</td></tr>",
            d.table.share(r.self_samples),
            r.self_samples,
            d.table.share(r.total_samples),
            r.total_samples,
            esc(&link),
            esc(&r.name),
            if r.kernel { " [k]" } else { "" }
        );
    }
    if d.table.rows.is_empty() {
        h.push_str("<tr><td colspan=\"5\">no samples in this range</td></tr>\n");
    }
    h.push_str("</tbody></table></div>\n");
    if let Some((changes, base)) = d.diff {
        let _ = writeln!(
            h,
            "<h2>Changes against {} from {} ago ({base} samples), in percentage points of each range's samples</h2>\
<div class=\"scroll\"><table id=\"changes\"><thead><tr><th>self before</th><th>self after</th><th>Δ self</th><th>Δ total</th><th class=\"fn\">function</th></tr></thead><tbody>",
            util::format_duration(q.range_len()),
            util::format_duration(q.diff_since.unwrap_or_default()),
        );
        for c in changes.iter().take(TABLE_ROWS) {
            let class = |d: f64| if d > 0.0 { "up" } else { "down" };
            let _ = writeln!(
                h,
                "<tr><td>{:.2}%</td><td>{:.2}%</td><td class=\"{}\">{:+.2}</td><td class=\"{}\">{:+.2}</td><td class=\"fn\">{}</td></tr>",
                c.self_before,
                c.self_after,
                class(c.self_delta()),
                c.self_delta(),
                class(c.total_delta()),
                c.total_delta(),
                esc(&c.name)
            );
        }
        h.push_str("</tbody></table></div>\n");
    }
    let mut svg_query = query.clone();
    if let Some(s) = &q.search {
        // inferno's script searches for `s` when the SVG loads.
        let _ = write!(svg_query, "&s={}", enc(s));
    }
    let _ = writeln!(
        h,
        "<h2>{}</h2><object id=\"flamegraph\" type=\"image/svg+xml\" data=\"/flamegraph.svg?{}\">the flamegraph needs a browser that shows SVG</object>",
        if d.diff.is_some() {
            "Differential flamegraph (red: more than the baseline, blue: less)"
        } else {
            "Flamegraph"
        },
        esc(&svg_query)
    );
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::table::Row;

    #[test]
    fn queries_round_trip_and_are_checked() {
        let q = PageQuery::parse(
            "since=1h&until=10m&service=a%20b&pid=42&label=k%3Dv%26x&q=%3Cscript%3E&diff_since=3h&sort=total&x=1&y=2&s=zz",
        )
        .unwrap();
        assert_eq!(q.since, Duration::from_secs(3600));
        assert_eq!(q.until, Some(Duration::from_secs(600)));
        assert_eq!(q.service.as_deref(), Some("a b"));
        assert_eq!(q.labels, vec![("k".into(), "v&x".into())]);
        assert_eq!(q.search.as_deref(), Some("<script>"));
        assert_eq!(PageQuery::parse(&q.to_query()).unwrap(), q);
        for bad in [
            "since=abc",
            "since=5m&until=10m",
            "pid=-1",
            "label=novalue",
            "since=1h&diff_since=30m",
            "q=%ZZ",
            "q=%FF",
            "sort=sideways",
            "since=99999999999999999999d",
        ] {
            let e = PageQuery::parse(bad).unwrap_err();
            assert!(!e.contains('\n') && !e.contains('<'), "{bad}: {e}");
        }
        assert!(PageQuery::parse(&"label=a%3Db&".repeat(17)).is_err());
        let q = PageQuery::parse("since=1.5h&until=0.0015s").unwrap();
        assert_eq!(PageQuery::parse(&q.to_query()).unwrap(), q);
        assert!(PageQuery::parse("since=0.0001s").is_err());
        assert!(PageQuery::parse(&"x".repeat(MAX_QUERY_BYTES + 1)).is_err());
    }

    #[test]
    fn names_labels_and_query_are_escaped() {
        let evil = "<script>alert(1)</script>\"'&";
        let q = PageQuery {
            service: Some(evil.into()),
            labels: vec![(evil.into(), evil.into())],
            search: Some(evil.into()),
            ..Default::default()
        };
        let table = FunctionTable {
            rows: vec![Row {
                name: evil.into(),
                thread: None,
                self_samples: 1,
                total_samples: 1,
                kernel: false,
            }],
            samples: 1,
        };
        let services = [evil.to_string()];
        let notes = [evil.to_string()];
        let page = render(&PageData {
            node: evil,
            query: &q,
            table: &table,
            windows: 0,
            current: true,
            diff: None,
            services: &services,
            notes: &notes,
        });
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("alert(1)</"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;"));
    }
}
