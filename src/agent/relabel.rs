//! Prometheus-style relabeling of a process's labels.
//!
//! The semantics follow Prometheus's `relabel_configs` so that rules can be
//! copied from Prometheus, Alloy or Parca configs unchanged: regexes are fully
//! anchored, missing source labels read as empty strings, a label set to the
//! empty string is removed, and `hashmod` uses the same MD5-based hash, so a
//! sharding rule picks the same shard here as it does in Prometheus.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use regex::Regex;
use serde::{Deserialize, Serialize};

/// A target's labels; sorted by name so equal sets compare and hash equal.
pub type Labels = BTreeMap<String, String>;

const DEFAULT_SEPARATOR: &str = ";";
const DEFAULT_REGEX: &str = "(.*)";
const DEFAULT_REPLACEMENT: &str = "$1";

/// One `[[relabel]]` table as written in the config file.
#[derive(Deserialize, Serialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Labels whose values are joined to form the value the regex sees.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_labels: Vec<String>,
    /// Joins the source label values (default `;`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// Regex, implicitly anchored at both ends (default `(.*)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Label written by replace, lowercase, uppercase and hashmod, or
    /// compared by keepequal and dropequal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_label: Option<String>,
    /// Template with `$1`, `${1}` or `${name}` capture references (default `$1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    /// What the rule does (default `replace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Divisor for `hashmod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modulus: Option<u64>,
}

/// What a rule does; the names are Prometheus's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Set `target_label` to the expanded replacement when the regex matches.
    Replace,
    /// Drop the target unless the joined value matches.
    Keep,
    /// Drop the target if the joined value matches.
    Drop,
    /// Drop the target unless the joined value equals `target_label`'s value.
    KeepEqual,
    /// Drop the target if the joined value equals `target_label`'s value.
    DropEqual,
    /// Set `target_label` to a hash of the joined value modulo `modulus`.
    HashMod,
    /// Copy every label whose name matches to the expanded replacement name.
    LabelMap,
    /// Remove every label whose name matches.
    LabelDrop,
    /// Remove every label whose name does not match.
    LabelKeep,
    /// Set `target_label` to the joined value in lower case.
    Lowercase,
    /// Set `target_label` to the joined value in upper case.
    Uppercase,
}

const ACTIONS: [(&str, Action); 11] = [
    ("replace", Action::Replace),
    ("keep", Action::Keep),
    ("drop", Action::Drop),
    ("keepequal", Action::KeepEqual),
    ("dropequal", Action::DropEqual),
    ("hashmod", Action::HashMod),
    ("labelmap", Action::LabelMap),
    ("labeldrop", Action::LabelDrop),
    ("labelkeep", Action::LabelKeep),
    ("lowercase", Action::Lowercase),
    ("uppercase", Action::Uppercase),
];

impl Action {
    /// Parses an action name; case-insensitive, as Prometheus accepts it.
    pub fn parse(name: &str) -> Option<Action> {
        let lower = name.to_ascii_lowercase();
        ACTIONS.iter().find(|(n, _)| *n == lower).map(|(_, a)| *a)
    }

    /// The action's name as written in configs.
    pub fn name(self) -> &'static str {
        ACTIONS
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("replace", |(n, _)| n)
    }
}

/// A validated rule with its regex compiled.
#[derive(Debug, Clone)]
pub struct Rule {
    source_labels: Vec<String>,
    separator: String,
    regex: Regex,
    target_label: String,
    replacement: String,
    action: Action,
    modulus: u64,
}

impl Rule {
    /// Checks and compiles one rule; `index` is the rule's number in error
    /// messages (the caller counts `[[relabel]]` tables from 1).
    pub fn compile(cfg: &RuleConfig, index: usize) -> Result<Rule> {
        let action_name = cfg.action.as_deref().unwrap_or("replace");
        let Some(action) = Action::parse(action_name) else {
            let names: Vec<&str> = ACTIONS.iter().map(|(n, _)| *n).collect();
            bail!(
                "relabel rule {index}: unknown action {action_name:?}; use one of {}",
                names.join(", ")
            );
        };
        let name = action.name();

        for s in &cfg.source_labels {
            if !is_valid_label_name(s) {
                bail!("relabel rule {index}: source label {s:?} is not a valid label name");
            }
        }

        // Prometheus rejects options that an action would silently ignore,
        // because they usually mean the user picked the wrong action.
        let set_but_unused = |fields: &[(&str, bool)]| -> Result<()> {
            if let Some((field, _)) = fields.iter().find(|(_, set)| *set) {
                bail!("relabel rule {index}: action {name:?} does not use {field}, but it is set");
            }
            Ok(())
        };
        let differs =
            |v: &Option<String>, default: &str| v.as_deref().is_some_and(|v| v != default);
        match action {
            Action::LabelDrop | Action::LabelKeep => set_but_unused(&[
                ("source_labels", !cfg.source_labels.is_empty()),
                ("separator", differs(&cfg.separator, DEFAULT_SEPARATOR)),
                ("target_label", cfg.target_label.is_some()),
                (
                    "replacement",
                    differs(&cfg.replacement, DEFAULT_REPLACEMENT),
                ),
                ("modulus", cfg.modulus.is_some()),
            ])?,
            Action::KeepEqual | Action::DropEqual => set_but_unused(&[
                ("regex", differs(&cfg.regex, DEFAULT_REGEX)),
                ("separator", differs(&cfg.separator, DEFAULT_SEPARATOR)),
                (
                    "replacement",
                    differs(&cfg.replacement, DEFAULT_REPLACEMENT),
                ),
                ("modulus", cfg.modulus.is_some()),
            ])?,
            _ => {}
        }

        let needs_target = matches!(
            action,
            Action::Replace
                | Action::HashMod
                | Action::Lowercase
                | Action::Uppercase
                | Action::KeepEqual
                | Action::DropEqual
        );
        let target_label = cfg.target_label.clone().unwrap_or_default();
        if needs_target {
            if target_label.is_empty() {
                bail!("relabel rule {index}: action {name:?} needs target_label");
            }
            // Only replace expands capture references in the target name, so
            // only there may the name be a template checked at apply time.
            let templated = action == Action::Replace && target_label.contains('$');
            if !templated && !is_valid_label_name(&target_label) {
                bail!(
                    "relabel rule {index}: target_label {target_label:?} is not a valid label name"
                );
            }
        }

        let replacement = cfg
            .replacement
            .clone()
            .unwrap_or_else(|| DEFAULT_REPLACEMENT.to_string());
        if action == Action::LabelMap
            && !replacement.contains('$')
            && !is_valid_label_name(&replacement)
        {
            bail!("relabel rule {index}: replacement {replacement:?} is not a valid label name");
        }

        let modulus = cfg.modulus.unwrap_or(0);
        if action == Action::HashMod && modulus == 0 {
            bail!("relabel rule {index}: action {name:?} needs a modulus greater than 0");
        }

        let re = cfg.regex.as_deref().unwrap_or(DEFAULT_REGEX);
        // Compiling the bare regex first stops a pattern such as `a)|(b` from
        // escaping the anchoring group and meaning something else.
        let regex = Regex::new(re)
            .and_then(|_| Regex::new(&format!("^(?:{re})$")))
            .map_err(|e| {
                anyhow!(
                    "relabel rule {index}: invalid regex {re:?}: {}",
                    regex_error(&e)
                )
            })?;

        Ok(Rule {
            source_labels: cfg.source_labels.clone(),
            separator: cfg
                .separator
                .clone()
                .unwrap_or_else(|| DEFAULT_SEPARATOR.to_string()),
            regex,
            target_label,
            replacement,
            action,
            modulus,
        })
    }

    /// The rule's action.
    pub fn action(&self) -> Action {
        self.action
    }

    /// Applies the rule in place; false means the target is dropped.
    fn process(&self, labels: &mut Labels) -> bool {
        let value = self
            .source_labels
            .iter()
            .map(|n| labels.get(n).map_or("", String::as_str))
            .collect::<Vec<_>>()
            .join(&self.separator);
        match self.action {
            Action::Keep => return self.regex.is_match(&value),
            Action::Drop => return !self.regex.is_match(&value),
            Action::KeepEqual => return label_value(labels, &self.target_label) == value,
            Action::DropEqual => return label_value(labels, &self.target_label) != value,
            Action::Replace => {
                let Some(caps) = self.regex.captures(&value) else {
                    return true;
                };
                let mut target = String::new();
                caps.expand(&self.target_label, &mut target);
                // An expanded name that is not a label name is skipped, as
                // Prometheus does, rather than failing the whole target.
                if !is_valid_label_name(&target) {
                    return true;
                }
                let mut result = String::new();
                caps.expand(&self.replacement, &mut result);
                set(labels, target, result);
            }
            Action::Lowercase => set(labels, self.target_label.clone(), value.to_lowercase()),
            Action::Uppercase => set(labels, self.target_label.clone(), value.to_uppercase()),
            Action::HashMod => {
                let h = prometheus_hash(&value) % self.modulus;
                set(labels, self.target_label.clone(), h.to_string());
            }
            Action::LabelMap => {
                // Collected first so a mapped name is not itself re-mapped
                // within the same rule.
                let mapped: Vec<(String, String)> = labels
                    .iter()
                    .filter_map(|(name, v)| {
                        let caps = self.regex.captures(name)?;
                        let mut new_name = String::new();
                        caps.expand(&self.replacement, &mut new_name);
                        Some((new_name, v.clone()))
                    })
                    .collect();
                for (name, v) in mapped {
                    if is_valid_label_name(&name) {
                        set(labels, name, v);
                    }
                }
            }
            Action::LabelDrop => labels.retain(|name, _| !self.regex.is_match(name)),
            Action::LabelKeep => labels.retain(|name, _| self.regex.is_match(name)),
        }
        true
    }
}

/// Compiles every rule, numbering them from 1 in error messages.
pub fn compile_all(cfgs: &[RuleConfig]) -> Result<Vec<Rule>> {
    cfgs.iter()
        .enumerate()
        .map(|(i, c)| Rule::compile(c, i + 1))
        .collect()
}

/// Applies rules in order. Returns None when a keep/drop rule drops the
/// target. Afterwards removes every label whose name starts with "__" (as
/// Prometheus does after relabeling), and labels with empty values.
pub fn apply(rules: &[Rule], labels: &Labels) -> Option<Labels> {
    let mut out = labels.clone();
    for rule in rules {
        if !rule.process(&mut out) {
            return None;
        }
    }
    out.retain(|name, value| !name.starts_with("__") && !value.is_empty());
    Some(out)
}

/// Prometheus's legacy label name rule, which every backend ember pushes to
/// accepts.
fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn label_value<'a>(labels: &'a Labels, name: &str) -> &'a str {
    labels.get(name).map_or("", String::as_str)
}

/// In Prometheus an empty value and a missing label are the same thing, so
/// setting a label to "" removes it.
fn set(labels: &mut Labels, name: String, value: String) {
    if value.is_empty() {
        labels.remove(&name);
    } else {
        labels.insert(name, value);
    }
}

/// The regex crate's syntax errors span several lines with a caret diagram;
/// config errors are one line, so keep only the final description.
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let last = last.strip_prefix("error: ").unwrap_or(last);
    last.trim_end_matches('.').to_string()
}

/// Prometheus's hashmod hash: the last 8 bytes of the MD5 digest read as a
/// big-endian integer.
fn prometheus_hash(value: &str) -> u64 {
    let digest = md5(value.as_bytes());
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&digest[8..]);
    u64::from_be_bytes(tail)
}

/// MD5 (RFC 1321), here only to match Prometheus's hashmod shard choice;
/// it is not used for anything security-related.
fn md5(data: &[u8]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    const K: [u32; 64] = [
        0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613,
        0xfd469501, 0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193,
        0xa679438e, 0x49b40821, 0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d,
        0x02441453, 0xd8a1e681, 0xe7d3fbc8, 0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed,
        0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a, 0xfffa3942, 0x8771f681, 0x6d9d6122,
        0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, 0x289b7ec6, 0xeaa127fa,
        0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665, 0xf4292244,
        0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
        0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb,
        0xeb86d391,
    ];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_le_bytes());

    let mut state: [u32; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];
    for chunk in msg.chunks_exact(64) {
        let mut m = [0u32; 16];
        for (w, bytes) in m.iter_mut().zip(chunk.chunks_exact(4)) {
            *w = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        let [mut a, mut b, mut c, mut d] = state;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(K[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        for (s, v) in state.iter_mut().zip([a, b, c, d]) {
            *s = s.wrapping_add(v);
        }
    }
    let mut out = [0u8; 16];
    for (o, s) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&s.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn rule(toml_text: &str) -> Rule {
        let cfg: RuleConfig = toml::from_str(toml_text).expect("rule parses");
        Rule::compile(&cfg, 1).expect("rule compiles")
    }

    fn compile_err(toml_text: &str) -> String {
        let cfg: RuleConfig = toml::from_str(toml_text).expect("rule parses");
        Rule::compile(&cfg, 3)
            .expect_err("rule must not compile")
            .to_string()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn md5_matches_rfc1321_vectors() {
        let cases = [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                "abcdefghijklmnopqrstuvwxyz",
                "c3fcd3d76192e4007dfb496cca67e13b",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(hex(&md5(input.as_bytes())), want, "md5({input:?})");
        }
        // Lengths around the 56-byte padding boundary need one or two blocks.
        for len in 54..=66 {
            let input = "x".repeat(len);
            assert_eq!(md5(input.as_bytes()).len(), 16);
        }
    }

    #[test]
    fn defaults_copy_source_to_target() {
        let r = rule(
            r#"
            source_labels = ["__meta_process_comm"]
            target_label = "app"
            "#,
        );
        let out = apply(&[r], &labels(&[("__meta_process_comm", "nginx")])).unwrap();
        assert_eq!(out, labels(&[("app", "nginx")]));
    }

    #[test]
    fn replace_with_numbered_and_braced_groups() {
        let r = rule(
            r#"
            source_labels = ["exe"]
            regex = "/usr/(s?bin)/(.+)"
            target_label = "binary"
            replacement = "${2}_in_$1"
            "#,
        );
        let out = apply(&[r], &labels(&[("exe", "/usr/sbin/nginx")])).unwrap();
        assert_eq!(out["binary"], "nginx_in_sbin");
    }

    #[test]
    fn replace_with_named_groups_and_templated_target() {
        let r = rule(
            r#"
            source_labels = ["systemd_unit"]
            regex = "(?P<name>[a-z]+)@(?P<inst>.+)\\.service"
            target_label = "unit_${name}"
            replacement = "${inst}"
            "#,
        );
        let out = apply(&[r], &labels(&[("systemd_unit", "getty@tty1.service")])).unwrap();
        assert_eq!(out["unit_getty"], "tty1");
    }

    #[test]
    fn dollar_name_takes_the_longest_name_like_go() {
        // `$1x` refers to a group named "1x", which does not exist, so it
        // expands to nothing; `${1}x` is how to write group 1 then "x".
        let r = rule(
            r#"
            source_labels = ["a"]
            regex = "(.*)"
            target_label = "b"
            replacement = "$1x-${1}x-$$"
            "#,
        );
        let out = apply(&[r], &labels(&[("a", "v")])).unwrap();
        assert_eq!(out["b"], "-vx-$");
    }

    #[test]
    fn replace_joins_sources_with_separator_and_missing_as_empty() {
        let r = rule(
            r#"
            source_labels = ["comm", "missing", "pid"]
            separator = "/"
            regex = "(.*)"
            target_label = "joined"
            "#,
        );
        let out = apply(&[r], &labels(&[("comm", "bash"), ("pid", "7")])).unwrap();
        assert_eq!(out["joined"], "bash//7");

        let r = rule(
            r#"
            source_labels = ["comm", "pid"]
            target_label = "joined"
            "#,
        );
        let out = apply(&[r], &labels(&[("comm", "bash"), ("pid", "7")])).unwrap();
        assert_eq!(out["joined"], "bash;7");
    }

    #[test]
    fn replace_without_match_leaves_labels_alone() {
        let r = rule(
            r#"
            source_labels = ["comm"]
            regex = "java"
            target_label = "lang"
            replacement = "jvm"
            "#,
        );
        let input = labels(&[("comm", "python3"), ("lang", "py")]);
        assert_eq!(apply(&[r], &input).unwrap(), input);
    }

    #[test]
    fn replace_with_empty_result_removes_target() {
        let r = rule(
            r#"
            source_labels = ["missing"]
            target_label = "service_name"
            "#,
        );
        let out = apply(&[r], &labels(&[("service_name", "x"), ("comm", "y")])).unwrap();
        assert_eq!(out, labels(&[("comm", "y")]));
    }

    #[test]
    fn replace_skips_invalid_expanded_target_names() {
        let r = rule(
            r#"
            source_labels = ["comm"]
            target_label = "$1"
            replacement = "yes"
            "#,
        );
        // "kworker/0:1" is not a label name, so nothing is set.
        let input = labels(&[("comm", "kworker/0:1")]);
        assert_eq!(apply(std::slice::from_ref(&r), &input).unwrap(), input);
        let out = apply(&[r], &labels(&[("comm", "sshd")])).unwrap();
        assert_eq!(out["sshd"], "yes");
    }

    #[test]
    fn regex_is_fully_anchored() {
        let keep_foo = rule(
            r#"
            source_labels = ["comm"]
            regex = "foo"
            action = "keep"
            "#,
        );
        assert!(apply(
            std::slice::from_ref(&keep_foo),
            &labels(&[("comm", "foobar")])
        )
        .is_none());
        assert!(apply(
            std::slice::from_ref(&keep_foo),
            &labels(&[("comm", "barfoo")])
        )
        .is_none());
        assert!(apply(&[keep_foo], &labels(&[("comm", "foo")])).is_some());

        // Alternation stays inside the anchors.
        let drop = rule(
            r#"
            source_labels = ["comm"]
            regex = "a|b"
            action = "drop"
            "#,
        );
        assert!(apply(std::slice::from_ref(&drop), &labels(&[("comm", "b")])).is_none());
        assert!(apply(&[drop], &labels(&[("comm", "ab")])).is_some());
    }

    #[test]
    fn keep_drops_non_matching_targets() {
        let r = rule(
            r#"
            source_labels = ["systemd_unit"]
            regex = "nginx\\.service|postgres.*"
            action = "keep"
            "#,
        );
        assert!(apply(
            std::slice::from_ref(&r),
            &labels(&[("systemd_unit", "nginx.service")])
        )
        .is_some());
        assert!(apply(
            std::slice::from_ref(&r),
            &labels(&[("systemd_unit", "postgresql.service")])
        )
        .is_some());
        assert!(apply(
            std::slice::from_ref(&r),
            &labels(&[("systemd_unit", "sshd.service")])
        )
        .is_none());
        // A missing source label is the empty string, which does not match.
        assert!(apply(&[r], &labels(&[("comm", "x")])).is_none());
    }

    #[test]
    fn drop_drops_matching_targets() {
        let r = rule(
            r#"
            source_labels = ["__meta_process_comm"]
            regex = "sshd|systemd.*"
            action = "drop"
            "#,
        );
        assert!(apply(
            std::slice::from_ref(&r),
            &labels(&[("__meta_process_comm", "sshd")])
        )
        .is_none());
        assert!(apply(
            std::slice::from_ref(&r),
            &labels(&[("__meta_process_comm", "systemd-journal")])
        )
        .is_none());
        assert!(apply(&[r], &labels(&[("__meta_process_comm", "sshd-session")])).is_some());
    }

    #[test]
    fn drop_stops_later_rules() {
        let drop_all = rule(r#"action = "drop""#);
        let set = rule(
            r#"
            target_label = "x"
            replacement = "y"
            "#,
        );
        assert!(apply(&[drop_all, set], &labels(&[("a", "b")])).is_none());
    }

    #[test]
    fn keepequal_and_dropequal_compare_with_target_label() {
        let keep = rule(
            r#"
            source_labels = ["a"]
            target_label = "b"
            action = "keepequal"
            "#,
        );
        let drop = rule(
            r#"
            source_labels = ["a"]
            target_label = "b"
            action = "dropequal"
            "#,
        );
        let same = labels(&[("a", "1"), ("b", "1")]);
        let different = labels(&[("a", "1"), ("b", "2")]);
        assert!(apply(std::slice::from_ref(&keep), &same).is_some());
        assert!(apply(&[keep], &different).is_none());
        assert!(apply(std::slice::from_ref(&drop), &same).is_none());
        assert!(apply(&[drop], &different).is_some());
    }

    #[test]
    fn labelmap_copies_matching_names_with_captures() {
        let r = rule(
            r#"
            action = "labelmap"
            regex = "__meta_process_(.+)"
            replacement = "proc_${1}"
            "#,
        );
        let input = labels(&[
            ("__meta_process_comm", "nginx"),
            ("__meta_process_pid", "42"),
            ("__meta_kubernetes_pod_uid", "u"),
            ("node", "n1"),
        ]);
        let out = apply(&[r], &input).unwrap();
        assert_eq!(
            out,
            labels(&[("node", "n1"), ("proc_comm", "nginx"), ("proc_pid", "42")])
        );
    }

    #[test]
    fn labelmap_default_replacement_uses_group_one() {
        let r = rule(
            r#"
            action = "labelmap"
            regex = "__meta_kubernetes_(pod_.+)"
            "#,
        );
        let out = apply(&[r], &labels(&[("__meta_kubernetes_pod_uid", "abc")])).unwrap();
        assert_eq!(out, labels(&[("pod_uid", "abc")]));
    }

    #[test]
    fn labelmap_is_anchored_on_the_name() {
        let r = rule(
            r#"
            action = "labelmap"
            regex = "comm"
            replacement = "command"
            "#,
        );
        let out = apply(&[r], &labels(&[("comm", "a"), ("xcomm", "b")])).unwrap();
        assert_eq!(
            out,
            labels(&[("comm", "a"), ("command", "a"), ("xcomm", "b")])
        );
    }

    #[test]
    fn labeldrop_removes_matching_names() {
        let r = rule(
            r#"
            action = "labeldrop"
            regex = "pid|exe"
            "#,
        );
        let out = apply(
            &[r],
            &labels(&[
                ("pid", "1"),
                ("exe", "/sbin/init"),
                ("comm", "systemd"),
                ("pidx", "z"),
            ]),
        )
        .unwrap();
        assert_eq!(out, labels(&[("comm", "systemd"), ("pidx", "z")]));
    }

    #[test]
    fn labelkeep_removes_non_matching_names() {
        let r = rule(
            r#"
            action = "labelkeep"
            regex = "service_name|node|__.*"
            "#,
        );
        let out = apply(
            &[r],
            &labels(&[
                ("service_name", "api"),
                ("node", "n1"),
                ("pid", "9"),
                ("__meta_process_pid", "9"),
            ]),
        )
        .unwrap();
        assert_eq!(out, labels(&[("node", "n1"), ("service_name", "api")]));
    }

    #[test]
    fn lowercase_and_uppercase() {
        let lower = rule(
            r#"
            source_labels = ["comm"]
            target_label = "lower"
            action = "lowercase"
            "#,
        );
        let upper = rule(
            r#"
            source_labels = ["comm"]
            target_label = "upper"
            action = "UpperCase"
            "#,
        );
        let out = apply(&[lower, upper], &labels(&[("comm", "MyApp-Ünï")])).unwrap();
        assert_eq!(out["lower"], "myapp-ünï");
        assert_eq!(out["upper"], "MYAPP-ÜNÏ");
    }

    #[test]
    fn hashmod_matches_prometheus() {
        // Expected values: int.from_bytes(md5(v).digest()[8:], "big") % m,
        // which is what Prometheus computes.
        let r = rule(
            r#"
            source_labels = ["pid", "comm"]
            target_label = "shard"
            modulus = 1000
            action = "hashmod"
            "#,
        );
        let out = apply(&[r], &labels(&[("pid", "42"), ("comm", "nginx")])).unwrap();
        assert_eq!(
            out["shard"],
            (prometheus_hash("42;nginx") % 1000).to_string()
        );
        assert_eq!(prometheus_hash(""), 0xe9800998ecf8427e);
        assert_eq!(prometheus_hash("abc") % 1000, 0xd6963f7d28e17f72_u64 % 1000);
    }

    #[test]
    fn hashmod_is_stable_and_in_range() {
        let r = rule(
            r#"
            source_labels = ["pid"]
            target_label = "__tmp_shard"
            modulus = 3
            action = "hashmod"
            "#,
        );
        let keep = rule(
            r#"
            source_labels = ["__tmp_shard"]
            regex = "1"
            action = "keep"
            "#,
        );
        let mut kept = 0;
        for pid in 0..300 {
            let input = labels(&[("pid", &pid.to_string())]);
            let mut l = input.clone();
            assert!(r.process(&mut l));
            let shard: u64 = l["__tmp_shard"].parse().unwrap();
            assert!(shard < 3);
            if let Some(out) = apply(&[r.clone(), keep.clone()], &input) {
                // The temporary label is gone after relabeling.
                assert!(!out.contains_key("__tmp_shard"));
                kept += 1;
            }
        }
        // Roughly a third of targets land on one shard.
        assert!((60..=140).contains(&kept), "kept {kept}");
    }

    #[test]
    fn apply_removes_double_underscore_and_empty_labels() {
        let out = apply(
            &[],
            &labels(&[
                ("__meta_process_pid", "1"),
                ("__name__", "x"),
                ("_private", "kept"),
                ("empty", ""),
                ("pid", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(out, labels(&[("_private", "kept"), ("pid", "1")]));
    }

    #[test]
    fn rules_apply_in_order() {
        let rules = compile_all(&[
            RuleConfig {
                source_labels: vec!["comm".into()],
                target_label: Some("service_name".into()),
                ..Default::default()
            },
            RuleConfig {
                source_labels: vec!["service_name".into()],
                regex: Some("(.*)".into()),
                target_label: Some("service_name".into()),
                replacement: Some("host/$1".into()),
                ..Default::default()
            },
        ])
        .unwrap();
        let out = apply(&rules, &labels(&[("comm", "redis")])).unwrap();
        assert_eq!(out["service_name"], "host/redis");
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        relabel: Vec<RuleConfig>,
    }

    #[test]
    fn deserializes_toml_rule_array() {
        let text = r#"
[[relabel]]
source_labels = ["__meta_process_comm"]
regex = "sshd|systemd.*"
action = "drop"
[[relabel]]
action = "labelmap"
regex = "__meta_process_(.+)"
replacement = "proc_${1}"
"#;
        let cfg: Config = toml::from_str(text).unwrap();
        assert_eq!(cfg.relabel.len(), 2);
        assert_eq!(cfg.relabel[0].action.as_deref(), Some("drop"));
        assert_eq!(cfg.relabel[1].source_labels, Vec::<String>::new());
        assert_eq!(cfg.relabel[1].separator, None);
        let rules = compile_all(&cfg.relabel).unwrap();
        assert_eq!(rules[0].action(), Action::Drop);
        assert_eq!(rules[1].action(), Action::LabelMap);

        let dropped = labels(&[("__meta_process_comm", "systemd"), ("pid", "1")]);
        assert!(apply(&rules, &dropped).is_none());
        let kept = labels(&[("__meta_process_comm", "nginx"), ("pid", "80")]);
        assert_eq!(
            apply(&rules, &kept).unwrap(),
            labels(&[("pid", "80"), ("proc_comm", "nginx")])
        );
    }

    #[test]
    fn serializes_back_to_the_same_rules() {
        let cfg = RuleConfig {
            source_labels: vec!["comm".into()],
            action: Some("keep".into()),
            regex: Some("nginx".into()),
            ..Default::default()
        };
        let text = toml::to_string(&cfg).unwrap();
        let back: RuleConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<RuleConfig>(
            r#"
            source_labels = ["comm"]
            target = "x"
            "#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `target`"), "{err}");
    }

    #[test]
    fn unknown_action_is_one_sentence_error() {
        let err = compile_err(r#"action = "rename""#);
        assert!(
            err.starts_with("relabel rule 3: unknown action \"rename\"; use one of replace, keep,"),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }

    #[test]
    fn invalid_regex_is_one_line_error_naming_it() {
        let err = compile_err("regex = \"(\"\naction = \"keep\"");
        assert!(
            err.starts_with("relabel rule 3: invalid regex \"(\": "),
            "{err}"
        );
        assert!(err.contains("unclosed group"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn regex_cannot_escape_the_anchors() {
        let err = compile_err("regex = \"a)|(b\"\naction = \"keep\"");
        assert!(err.contains("invalid regex \"a)|(b\""), "{err}");
    }

    #[test]
    fn missing_target_label_is_an_error() {
        assert_eq!(
            compile_err(r#"source_labels = ["comm"]"#),
            "relabel rule 3: action \"replace\" needs target_label"
        );
        for action in [
            "hashmod",
            "lowercase",
            "uppercase",
            "keepequal",
            "dropequal",
        ] {
            let err = compile_err(&format!("action = \"{action}\"\nmodulus = 2"));
            // keepequal/dropequal complain about modulus first.
            assert!(
                err.contains("needs target_label") || err.contains("does not use modulus"),
                "{action}: {err}"
            );
        }
    }

    #[test]
    fn invalid_names_are_errors() {
        assert_eq!(
            compile_err(
                r#"
                source_labels = ["comm"]
                target_label = "my-label"
                "#
            ),
            "relabel rule 3: target_label \"my-label\" is not a valid label name"
        );
        assert_eq!(
            compile_err(
                r#"
                source_labels = ["1comm"]
                action = "keep"
                "#
            ),
            "relabel rule 3: source label \"1comm\" is not a valid label name"
        );
        assert_eq!(
            compile_err(
                r#"
                action = "labelmap"
                replacement = "a.b"
                "#
            ),
            "relabel rule 3: replacement \"a.b\" is not a valid label name"
        );
        // Only replace expands templates in the target name.
        assert!(compile_err(
            r#"
            target_label = "$1"
            action = "lowercase"
            "#
        )
        .contains("is not a valid label name"));
    }

    #[test]
    fn hashmod_needs_modulus() {
        assert_eq!(
            compile_err(
                r#"
                source_labels = ["pid"]
                target_label = "shard"
                action = "hashmod"
                "#
            ),
            "relabel rule 3: action \"hashmod\" needs a modulus greater than 0"
        );
        assert!(compile_err(
            r#"
            target_label = "shard"
            action = "hashmod"
            modulus = 0
            "#
        )
        .contains("modulus greater than 0"));
    }

    #[test]
    fn unused_options_are_errors() {
        assert_eq!(
            compile_err(
                r#"
                source_labels = ["pid"]
                action = "labeldrop"
                regex = "pid"
                "#
            ),
            "relabel rule 3: action \"labeldrop\" does not use source_labels, but it is set"
        );
        assert!(compile_err(
            r#"
            action = "labelkeep"
            target_label = "x"
            "#
        )
        .contains("does not use target_label"));
        assert!(compile_err(
            r#"
            source_labels = ["a"]
            target_label = "b"
            regex = "x"
            action = "keepequal"
            "#
        )
        .contains("does not use regex"));
        // Spelling out a default is not an error.
        rule(
            r#"
            action = "labeldrop"
            regex = "pid"
            separator = ";"
            replacement = "$1"
            "#,
        );
    }

    #[test]
    fn action_names_round_trip() {
        for (name, action) in ACTIONS {
            assert_eq!(Action::parse(name), Some(action));
            assert_eq!(Action::parse(&name.to_uppercase()), Some(action));
            assert_eq!(action.name(), name);
        }
        assert_eq!(Action::parse("label_map"), None);
    }
}
