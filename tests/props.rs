//! Property tests of every parser that takes user or untrusted input:
//! durations and sizes, the agent config, relabel rules, the pprof decoder
//! and merge behind `ember query`, the live views over any decoded profile
//! (function tables, diffs, the agent's page) and the page's query string,
//! `/proc/PID/cgroup` and `/proc/PID/stat`.
//! Each must give a value or an error for any input, never panic, and never
//! allocate past its bound. No root needed; case counts are kept modest so
//! the whole file runs in seconds.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use ember::agent::config;
use ember::agent::meta::parse_cgroup;
use ember::agent::relabel::{self, Labels, RuleConfig};
use ember::export::{self, ExportOptions, Format};
use ember::process::maps::parse_stat_start_time;
use ember::profile::merge::Merger;
use ember::profile::pprof::{self, proto};
use ember::util::{self, ParseError, MAX_DURATION};
use proptest::prelude::*;
use prost::Message;

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Text that looks like a duration or size more often than random text.
fn value_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9. ]{0,30}(ms|s|sec|secs|m|min|mins|h|d|B|K|k|KiB|M|MiB|G|GiB|T|TiB|KB|kB|MB|GB|TB|y|e3|-)?",
        (any::<u64>(), "(ms|s|m|h|d|B|KiB|MiB|GiB|TiB|TB)").prop_map(|(n, u)| format!("{n}{u}")),
    ]
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn durations_never_panic_and_stay_in_bounds(s in value_text()) {
        if let Ok(d) = util::parse_duration(&s) {
            prop_assert!(d > Duration::ZERO && d <= MAX_DURATION);
            // Every accepted value fits the nanosecond arithmetic elsewhere.
            prop_assert!(u64::try_from(d.as_nanos()).is_ok());
        }
        let r = util::duration_in("--x", &s, Duration::from_millis(1), Duration::from_secs(3600));
        if let Err(e) = r {
            prop_assert_eq!(e.to_string().lines().count(), 1);
        }
    }

    #[test]
    fn integer_durations_are_exact_or_too_large(n in any::<u64>(), unit in 0usize..5) {
        let (name, ns): (&str, u128) =
            [("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000), ("d", 86_400_000_000_000)][unit];
        let want = u128::from(n) * ns;
        match util::parse_duration(&format!("{n}{name}")) {
            Ok(d) => prop_assert_eq!(d.as_nanos(), want),
            Err(ParseError::Zero) => prop_assert_eq!(n, 0),
            Err(ParseError::TooLarge) => prop_assert!(want > MAX_DURATION.as_nanos()),
            Err(e) => prop_assert!(false, "{n}{name}: {e}"),
        }
    }

    #[test]
    fn durations_round_trip(ms in 1u64..=MAX_DURATION.as_millis() as u64) {
        let d = Duration::from_millis(ms);
        prop_assert_eq!(util::parse_duration(&util::format_duration(d)), Ok(d));
    }

    #[test]
    fn sizes_never_panic(s in value_text()) {
        if let Ok(n) = util::parse_size(&s) {
            prop_assert!(n > 0);
        }
        if let Err(e) = util::size_in("k", &s, 1024, 1 << 40) {
            prop_assert_eq!(e.to_string().lines().count(), 1);
        }
    }

    #[test]
    fn sizes_are_exact_or_too_large(n in any::<u64>(), unit in 0usize..4) {
        let (name, m): (&str, u128) = [("B", 1), ("KiB", 1 << 10), ("GiB", 1 << 30), ("TB", 1_000_000_000_000)][unit];
        let want = u128::from(n) * m;
        match util::parse_size(&format!("{n}{name}")) {
            Ok(v) => prop_assert_eq!(u128::from(v), want),
            Err(ParseError::Zero) => prop_assert_eq!(n, 0),
            Err(ParseError::TooLarge) => prop_assert!(want > u128::from(u64::MAX)),
            Err(e) => prop_assert!(false, "{n}{name}: {e}"),
        }
    }

    #[test]
    fn sizes_round_trip(n in 1u64..u64::MAX) {
        prop_assert_eq!(util::parse_size(&util::format_size(n)), Ok(n));
    }

    #[test]
    fn printable_text_has_no_controls(s in any::<String>(), max in 0usize..300) {
        let p = util::printable(&s, max);
        prop_assert!(!p.chars().any(|c| c.is_control()), "{p:?}");
        prop_assert!(p.chars().count() <= max + 1);
    }

    #[test]
    fn redacted_urls_hide_userinfo(user in "[a-z]{1,8}", secret in "[A-Za-z0-9]{12,20}", host in "[a-z]{1,10}(:[0-9]{1,5})?", path in "(/[a-z?=&]{0,10}){0,3}") {
        let shown = util::redact_url(&format!("http://{user}:{secret}@{host}{path}"));
        prop_assert!(!shown.contains(&secret), "{shown}");
        prop_assert!(!shown.chars().any(|c| c.is_control()));
    }
}

/// A config's TOML text from pieces that hit real keys with odd values.
fn config_text() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        value_text().prop_map(|s| format!("{s:?}")),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
    ];
    let top = prop_oneof![
        Just("frequency"),
        Just("window"),
        Just("kernel"),
        Just("node"),
        Just("bogus")
    ];
    let store = prop_oneof![Just("dir"), Just("retention"), Just("max_size")];
    let sampler = prop_oneof![
        Just("count_map_size"),
        Just("stack_map_size"),
        Just("unwind"),
        Just("unwind_memory")
    ];
    let push = prop_oneof![
        Just("kind"),
        Just("url"),
        Just("tenant"),
        Just("basic_auth_user"),
        Just("bearer_token_file"),
        Just("timeout"),
        Just("gzip"),
        Just("headers"),
    ];
    (
        prop::collection::vec((top, scalar.clone()), 0..4),
        prop::collection::vec((store, scalar.clone()), 0..3),
        prop::collection::vec((sampler, scalar.clone()), 0..3),
        prop::option::of(prop::collection::vec((push, scalar.clone()), 0..6)),
        prop::option::of(prop::collection::vec(
            (
                prop_oneof![
                    Just("action"),
                    Just("regex"),
                    Just("source_labels"),
                    Just("target_label"),
                    Just("modulus"),
                    Just("replacement")
                ],
                scalar,
            ),
            0..5,
        )),
    )
        .prop_map(|(top, store, sampler, push, relabel)| {
            let mut t = String::new();
            for (k, v) in top {
                t += &format!("{k} = {v}\n");
            }
            t += "[store]\n";
            for (k, v) in store {
                t += &format!("{k} = {v}\n");
            }
            t += "[sampler]\n";
            for (k, v) in sampler {
                t += &format!("{k} = {v}\n");
            }
            if let Some(p) = push {
                t += "[[push]]\n";
                for (k, v) in p {
                    t += &format!("{k} = {v}\n");
                }
            }
            if let Some(r) = relabel {
                t += "[[relabel]]\n";
                for (k, v) in r {
                    t += &format!("{k} = {v}\n");
                }
            }
            t
        })
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn config_text_never_panics(text in prop_oneof![any::<String>(), config_text()]) {
        match config::parse(&text) {
            Ok(c) => {
                if let Err(e) = c.validate() {
                    prop_assert_eq!(e.to_string().lines().count(), 1, "{}", e);
                }
                // --check-config's output always renders.
                prop_assert!(toml::to_string_pretty(&c.redacted()).is_ok());
            }
            Err(e) => prop_assert_eq!(e.to_string().lines().count(), 1, "{}", e),
        }
    }

    #[test]
    fn config_values_never_panic(
        frequency in any::<u64>(),
        window in value_text(),
        retention in value_text(),
        store_size in value_text(),
        queue_size in value_text(),
        count_map in any::<u32>(),
        timeout in value_text(),
        url in prop_oneof![any::<String>(), "(http|https|ftp)://[a-z@:]{0,12}(:[0-9]{1,6})?(/[a-z?#]{0,6})?"],
        header in (any::<String>(), any::<String>()),
    ) {
        let mut c = config::Config {
            frequency,
            window,
            ..Default::default()
        };
        c.store.retention = retention;
        c.store.max_size = store_size;
        c.queue.max_size = queue_size;
        c.sampler.count_map_size = count_map;
        c.push.push(config::PushConfig {
            kind: "pyroscope".into(),
            url,
            tenant: None,
            basic_auth_user: None,
            basic_auth_password_file: None,
            bearer_token_file: None,
            headers: [header].into_iter().collect(),
            ca_file: None,
            timeout,
            gzip: true,
        });
        match c.validate() {
            Err(e) => prop_assert_eq!(e.to_string().lines().count(), 1, "{}", e),
            Ok(s) => {
                // What --check-config prints never holds a header value.
                let shown = s.redacted_toml().unwrap();
                for (_, v) in &s.push[0].headers {
                    if v.expose().len() > 12 {
                        prop_assert!(!shown.contains(v.expose()));
                    }
                }
            }
        }
    }
}

fn label_map() -> impl Strategy<Value = Labels> {
    prop::collection::btree_map(
        prop_oneof![
            "(__meta_process_)?(pid|comm|exe|cgroup|container_id)",
            "[a-zA-Z_][a-zA-Z0-9_]{0,6}",
            any::<String>(),
        ],
        any::<String>(),
        0..8,
    )
}

fn rule_config() -> impl Strategy<Value = RuleConfig> {
    let action = prop_oneof![
        Just("replace"),
        Just("keep"),
        Just("drop"),
        Just("keepequal"),
        Just("dropequal"),
        Just("hashmod"),
        Just("labelmap"),
        Just("labeldrop"),
        Just("labelkeep"),
        Just("lowercase"),
        Just("uppercase"),
        Just("Replace"),
        Just("explode"),
    ];
    let regex = prop_oneof![
        "[a-z.*+?()|$^\\\\\\[\\]{}0-9]{0,12}",
        Just("(.*)".to_string()),
        Just("(?P<n>[a-z]+)-(.*)".to_string()),
        any::<String>(),
    ];
    let template = prop_oneof![
        "[a-z_$]{0,4}(\\$[0-9]{1,3}|\\$\\{[a-z0-9]{0,3}\\}|\\$\\{n\\})?[a-z_]{0,3}",
        any::<String>(),
    ];
    (
        prop::collection::vec(
            prop_oneof!["[a-z_]{1,8}", Just("comm".to_string()), any::<String>()],
            0..3,
        ),
        prop::option::of(prop_oneof![Just(";".to_string()), any::<String>()]),
        prop::option::of(regex),
        prop::option::of(template.clone()),
        prop::option::of(template),
        prop::option::of(action.prop_map(str::to_string)),
        prop::option::of(prop_oneof![Just(0u64), 1u64..10, any::<u64>()]),
    )
        .prop_map(
            |(source_labels, separator, regex, target_label, replacement, action, modulus)| {
                RuleConfig {
                    source_labels,
                    separator,
                    regex,
                    target_label,
                    replacement,
                    action,
                    modulus,
                }
            },
        )
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn relabel_rules_never_panic(cfgs in prop::collection::vec(rule_config(), 1..4), labels in label_map()) {
        match relabel::compile_all(&cfgs) {
            Ok(rules) => {
                if let Some(out) = relabel::apply(&rules, &labels) {
                    for (k, v) in &out {
                        prop_assert!(!k.starts_with("__") && !v.is_empty());
                    }
                }
            }
            Err(e) => prop_assert_eq!(e.to_string().lines().count(), 1, "{}", e),
        }
    }
}

/// A pprof profile whose indices (strings, ids) may point anywhere.
fn wild_profile() -> impl Strategy<Value = proto::Profile> {
    let idx = || prop_oneof![0i64..8, any::<i64>()];
    let id = || prop_oneof![0u64..6, any::<u64>()];
    let strings = prop::collection::vec(
        prop_oneof![
            Just("".to_string()),
            Just("pid".to_string()),
            Just("tid".to_string()),
            Just("comm".to_string()),
            Just("thread_name".to_string()),
            Just("[kernel.kallsyms]".to_string()),
            Just("[lost stack]".to_string()),
            any::<String>(),
        ],
        0..8,
    );
    let mapping = (id(), any::<u64>(), any::<u64>(), any::<u64>(), idx(), idx()).prop_map(
        |(id, memory_start, memory_limit, file_offset, filename, build_id)| proto::Mapping {
            id,
            memory_start,
            memory_limit,
            file_offset,
            filename,
            build_id,
            ..Default::default()
        },
    );
    let function = (id(), idx(), idx(), idx(), any::<i64>()).prop_map(
        |(id, name, system_name, filename, start_line)| proto::Function {
            id,
            name,
            system_name,
            filename,
            start_line,
        },
    );
    let line = (id(), any::<i64>()).prop_map(|(function_id, line)| proto::Line {
        function_id,
        line,
        column: 0,
    });
    let location = (id(), id(), any::<u64>(), prop::collection::vec(line, 0..3)).prop_map(
        |(id, mapping_id, address, line)| proto::Location {
            id,
            mapping_id,
            address,
            line,
            is_folded: false,
        },
    );
    let label = (idx(), idx(), any::<i64>()).prop_map(|(key, s, num)| proto::Label {
        key,
        str: s,
        num,
        num_unit: 0,
    });
    let sample = (
        prop::collection::vec(id(), 0..5),
        prop::collection::vec(any::<i64>(), 0..3),
        prop::collection::vec(label, 0..4),
    )
        .prop_map(|(location_id, value, label)| proto::Sample {
            location_id,
            value,
            label,
        });
    (
        strings,
        prop::collection::vec(mapping, 0..3),
        prop::collection::vec(function, 0..4),
        prop::collection::vec(location, 0..5),
        prop::collection::vec(sample, 0..6),
        any::<i64>(),
        any::<i64>(),
        prop_oneof![any::<i64>(), 1i64..1_000_000_000],
        prop::collection::vec(idx(), 0..3),
    )
        .prop_map(
            |(string_table, mapping, function, location, sample, time, dur, period, comment)| {
                proto::Profile {
                    string_table,
                    mapping,
                    function,
                    location,
                    sample,
                    time_nanos: time,
                    duration_nanos: dur,
                    period,
                    comment,
                    sample_type: vec![proto::ValueType { r#type: 1, unit: 2 }],
                    ..Default::default()
                }
            },
        )
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b).unwrap();
    gz.finish().unwrap()
}

/// What `ember query` does with stored files: decode, merge, write every
/// format.
fn query_path(files: &[Vec<u8>]) {
    let mut m = Merger::new("props".into());
    for f in files {
        if let Ok(p) = pprof::read(f) {
            m.add(&p, |_| true);
            m.add(&p, |pid| pid % 2 == 0);
        }
    }
    let merged = m.finish();
    let _ = merged.total();
    let _ = merged.top_self(5);
    for f in [Format::Pprof, Format::Folded, Format::Svg] {
        let mut out = Vec::new();
        export::write_to(
            &merged,
            f,
            &mut out,
            ExportOptions {
                threads: true,
                ..Default::default()
            },
        )
        .unwrap();
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn pprof_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = pprof::read(&bytes);
        let _ = pprof::read(&gzip(&bytes));
        query_path(&[bytes]);
    }

    #[test]
    fn pprof_with_wild_indices_merges(ps in prop::collection::vec(wild_profile(), 1..3)) {
        let files: Vec<Vec<u8>> = ps.iter().map(|p| gzip(&p.encode_to_vec())).collect();
        for f in &files {
            prop_assert!(pprof::read(f).is_ok());
        }
        query_path(&files);
        // Push splits ember's own profiles; it holds for any of them too.
        for p in &ps {
            let p = pprof::to_profile(p);
            let parts = pprof::split(&p, pprof::EncodeOptions::default(), 2, 200);
            prop_assert_eq!(parts.iter().map(|q| q.sample.len()).sum::<usize>(), p.samples.len());
        }
    }

    #[test]
    fn views_of_wild_profiles_never_panic(a in wild_profile(), b in wild_profile()) {
        use ember::view::{diff, page, table};
        let (a, b) = (pprof::to_profile(&a), pprof::to_profile(&b));
        for threads in [false, true] {
            for kernel in [false, true] {
                let mut t = table::functions(&a, table::TableOptions { kernel, threads });
                prop_assert!(t.rows.iter().all(|r| r.self_samples <= r.total_samples));
                t.sort(table::Sort::Total);
                let _ = t.text(10, 80);
                let q = page::PageQuery::default();
                let html = page::render(&page::PageData {
                    node: "n",
                    query: &q,
                    table: &t,
                    windows: 1,
                    current: false,
                    diff: None,
                    services: &[],
                    notes: &[],
                });
                prop_assert!(!html.contains("<script"));
            }
        }
        for absolute in [false, true] {
            let o = diff::DiffOptions { absolute };
            let _ = diff::lines(&a, &b, o);
            let _ = diff::changes(&a, &b, o);
            let mut out = Vec::new();
            for f in [diff::DiffFormat::Svg, diff::DiffFormat::Folded, diff::DiffFormat::Text] {
                out.clear();
                prop_assert!(diff::write(&a, &b, o, f, "t", &mut out).is_ok());
            }
        }
    }

    #[test]
    fn page_queries_parse_or_fail_in_one_sentence(q in prop_oneof![
        any::<String>(),
        "((since|until|diff_since|service|pid|label|q|sort|s|x)=[a-z0-9.%=<>&+ ]{0,12}&?){0,8}",
    ]) {
        use ember::view::page::PageQuery;
        match PageQuery::parse(&q) {
            Ok(p) => prop_assert_eq!(PageQuery::parse(&p.to_query()), Ok(p)),
            Err(e) => prop_assert!(!e.contains('\n') && !e.is_empty()),
        }
    }

    #[test]
    fn pprof_size_estimate_bounds_decoding(p in wild_profile()) {
        let bytes = p.encode_to_vec();
        let est = pprof::decoded_size(&bytes).unwrap();
        // The estimate covers at least the elements' own structs.
        let floor = (p.sample.len() * std::mem::size_of::<proto::Sample>()
            + p.location.len() * std::mem::size_of::<proto::Location>()
            + p.string_table.iter().map(|s| s.len()).sum::<usize>()) as u64;
        prop_assert!(est >= floor, "{est} < {floor}");
    }

    #[test]
    fn cgroup_text_never_panics(text in prop_oneof![
        any::<String>(),
        prop::collection::vec(
            (
                prop_oneof![Just("0".to_string()), "[0-9]{1,2}"],
                prop_oneof![Just(String::new()), "[a-z,=]{0,12}"],
                prop::collection::vec(prop_oneof![
                    "[a-z0-9_.@-]{0,20}(\\.service|\\.scope|\\.slice)?",
                    "(docker-|cri-containerd-|crio-|libpod-conmon-)?[0-9a-f]{64}(\\.scope)?",
                    "kubepods-besteffort-pod[0-9a-f_]{36}\\.slice",
                    "pod[0-9a-f-]{36}",
                    any::<String>(),
                ], 0..5),
                prop::bool::ANY,
            ),
            0..6,
        ).prop_map(|lines| lines.into_iter().map(|(id, ctl, comps, deleted)| {
            format!("{id}:{ctl}:/{}{}\n", comps.join("/"), if deleted { " (deleted)" } else { "" })
        }).collect::<String>()),
    ]) {
        let info = parse_cgroup(&text);
        prop_assert!(info.path.is_empty() || info.path.starts_with('/'));
        prop_assert!(text.contains(info.path.as_str()));
        if let Some(id) = &info.container_id {
            prop_assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        if let Some(u) = &info.pod_uid {
            prop_assert!(u.len() == 36 || u.len() == 32);
        }
    }

    #[test]
    fn stat_text_never_panics(text in any::<String>()) {
        let _ = parse_stat_start_time(&text);
    }

    #[test]
    fn stat_start_time_is_field_22(comm in any::<String>(), start in any::<u64>(), pid in any::<u32>()) {
        // comm may hold spaces, ')' and anything else but a NUL.
        let comm: String = comm.chars().filter(|&c| c != '\0').take(16).collect();
        let stat = format!(
            "{pid} ({comm}) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 {start} 4096 12 18446744073709551615 1 2 3\n"
        );
        prop_assert_eq!(parse_stat_start_time(&stat), Some(start));
    }
}

/// A declared length past the end is an error, not an allocation.
#[test]
fn huge_declared_lengths_are_errors() {
    // string_table (field 6) declaring 2^62 bytes.
    let mut b = vec![0x32];
    let mut n: u64 = 1 << 62;
    while n >= 0x80 {
        b.push((n as u8) | 0x80);
        n >>= 7;
    }
    b.push(n as u8);
    b.extend_from_slice(b"abc");
    assert!(pprof::read(&b).is_err());
    assert!(pprof::decoded_size(&b).is_none());
    // A varint longer than ten bytes.
    assert!(pprof::read(&[0x08; 20]).is_err());
}

/// Two bytes per empty sample would decode to ~36 times their size: a
/// profile of millions of them is refused before decoding.
#[test]
fn tiny_elements_are_bounded_before_decoding() {
    let n = 8_000_000;
    let bytes: Vec<u8> = [0x12u8, 0x00].repeat(n);
    let est = pprof::decoded_size(&bytes).unwrap();
    assert!(est >= (n * std::mem::size_of::<proto::Sample>()) as u64);
    let e = pprof::read(&bytes).unwrap_err().to_string();
    assert!(e.contains("decoded"), "{e}");
    // The same within bounds decodes.
    let ok: Vec<u8> = [0x12u8, 0x00].repeat(1000);
    assert_eq!(pprof::read(&ok).unwrap().sample.len(), 1000);
}

/// A gzip bomb stops at the uncompressed bound.
#[test]
fn gzip_bombs_stop_at_the_bound() {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(pprof::MAX_DECODED_BYTES >> 20) + 8 {
        gz.write_all(&zeros).unwrap();
    }
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 1 << 20);
    let e = pprof::read(&bomb).unwrap_err().to_string();
    assert!(e.contains("larger than"), "{e}");
}

/// Labels discovered from hostile processes (any comm, exe or cgroup) go
/// through the default-free rule set untouched but for `__` names.
#[test]
fn labels_without_rules_drop_only_meta() {
    let l: BTreeMap<String, String> = [("__meta_x", "1"), ("comm", "a\nb"), ("e", "")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let out = relabel::apply(&[], &l).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out["comm"], "a\nb");
}
