//! Traffic shaping: the limits that apply to one path, from one egress
//! source to one *site* (the set of MX hosts a destination's mail goes
//! to), read from the shaping file (`delivery.shaping_file`) and the
//! rules ringpost ships (`default-shaping.toml`, embedded).
//!
//! Owns: [`Shaping`] (parsed rules, the operator's first; first rule that
//! fits a destination wins), [`Limits`] (what a path may do) and
//! [`site_name`] (a destination's site from its targets). All pure: the
//! caller reads the file, and a reload is a new `Shaping` handed to every
//! shard (see `Scheduler::set_shaping`).
//!
//! A rule fits a destination if the recipient domain is one of its
//! `domains`, or one of the site's MX hosts ends with one of its
//! `mx_suffix`es. The rule's values replace `[delivery]`'s, and a
//! `[site.source.NAME]` table replaces them again for one source.
//!
//! Must not: do I/O, keep per-path state (`gate` does), or weaken TLS: a
//! rule's `tls` can only ask for more than `[tls]` does.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{DeliveryConfig, OutboundTls};

/// The rules ringpost ships: starting points for the large providers,
/// each with where its numbers came from.
pub const DEFAULT_SHAPING: &str = include_str!("default-shaping.toml");

/// Every problem of the shaping files, one line each: the file, the
/// line of the offending key (or of its `[[site]]` table when the problem
/// names no key), the rule's name and what is wrong, as `check-config` reports the main config's.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ShapingError(pub Vec<String>);

/// The keys a rule (or a source within it) may set, each defined once:
/// its doc, its type, what a path has when no rule sets it, and its
/// check. From this list come [`Overrides`] (what a rule sets), [`Limits`]
/// (what a path may do), [`Limits::of`] (`[delivery]`'s values),
/// [`Limits::apply`], [`check_overrides`] and [`key_table`]
/// (docs/shaping.md's table, kept the same by a test).
///
/// A key is `base` (every path has a value: `[delivery]`'s key of the
/// same name when no rule sets it) or `optional` (no value unless a rule
/// sets one).
macro_rules! path_keys {
    (
        $(
            $(#[doc = $doc:literal])*
            $key:ident : $kind:ident $ty:ty, unset = $unset:literal, check = $check:expr;
        )*
    ) => {
        /// Values a rule (or a source within it) may set; unset ones come
        /// from the level above.
        #[derive(Debug, Clone, Default, PartialEq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Overrides {
            $( $(#[doc = $doc])* pub $key: Option<$ty>, )*
        }

        /// What one path (source, site) may do, node-wide.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Limits {
            $( $(#[doc = $doc])* pub $key: path_keys!(@limit $kind $ty), )*
        }

        impl Limits {
            /// `[delivery]`'s values: the limits of a site no rule fits.
            pub fn of(d: &DeliveryConfig) -> Limits {
                Limits { $( $key: path_keys!(@base $kind d.$key), )* }
            }

            /// A rule's (or source's) values over these.
            fn apply(&mut self, o: &Overrides) {
                $( if let Some(v) = o.$key { self.$key = path_keys!(@set $kind v); } )*
            }
        }

        /// The first problem of a rule's (or source's) values, as
        /// "`key` what is wrong".
        fn check_overrides(o: &Overrides) -> Option<String> {
            $(
                if let Some(v) = &o.$key {
                    let check: fn(&$ty) -> Result<(), &'static str> = $check;
                    if let Err(why) = check(v) {
                        return Some(format!("{} {why}", stringify!($key)));
                    }
                }
            )*
            None
        }

        /// docs/shaping.md's table of the keys (Markdown).
        pub fn key_table() -> String {
            let mut out = String::from("| key | meaning | when no rule sets it |\n|---|---|---|\n");
            $(
                let doc: &str = concat!($($doc, " "),*);
                let doc = doc.split_whitespace().collect::<Vec<_>>().join(" ");
                out.push_str(&format!("| `{}` | {} | {} |\n", stringify!($key), doc, $unset));
            )*
            out
        }
    };
    (@limit base $ty:ty) => { $ty };
    (@limit optional $ty:ty) => { Option<$ty> };
    (@base base $e:expr) => { $e };
    (@base optional $e:expr) => { None };
    (@set base $v:expr) => { $v };
    (@set optional $v:expr) => { Some($v) };
}

fn at_least_one<T: Into<u64> + Copy>(v: &T) -> Result<(), &'static str> {
    match (*v).into() {
        0 => Err("must be at least 1"),
        _ => Ok(()),
    }
}

path_keys! {
    /// Connections open at once on the path, node-wide; idle pooled ones
    /// count.
    max_connections: base usize, unset = "`delivery.max_connections`",
        check = |v| at_least_one(&(*v as u64));
    /// Messages started per second on the path, node-wide; `0`: no limit.
    max_messages_per_second: base f64, unset = "`delivery.max_messages_per_second`",
        check = |v| match *v >= 0.0 && v.is_finite() {
            true => Ok(()),
            false => Err("must be 0 (no limit) or positive"),
        };
    /// Transactions on one connection before it is closed.
    max_messages_per_connection: base u32, unset = "`delivery.max_messages_per_connection`",
        check = at_least_one;
    /// TCP connect timeout, in seconds.
    connect_timeout_secs: base u64, unset = "`delivery.connect_timeout_secs`",
        check = at_least_one;
    /// An idle pooled connection is closed after this many seconds.
    idle_timeout_secs: base u64, unset = "`delivery.idle_timeout_secs`",
        check = at_least_one;
    /// `"opportunistic"` or `"require"`: at least this much TLS (the
    /// destination's `[tls]` policy may ask more; `require` needs the CA
    /// bundle, `tls.ca_file`).
    tls: optional OutboundTls, unset = "`[tls]` only",
        check = |v| match v {
            OutboundTls::None => Err("may be \"opportunistic\" or \"require\": a shaping rule never weakens TLS"),
            _ => Ok(()),
        };
    /// Messages per clock hour (UTC) on the path; `0`: none.
    max_messages_per_hour: optional u64, unset = "no cap", check = |_| Ok(());
    /// Messages per day (UTC) on the path; `0`: none (a source kept off a
    /// site; a warm-up lowers it further).
    max_messages_per_day: optional u64, unset = "no cap", check = |_| Ok(());
}

/// One `[[site]]` of a shaping file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The name in metrics, logs and `queue summary --by site`.
    pub name: String,
    /// Recipient domains this rule is for (exact, case-insensitive).
    #[serde(default)]
    pub domains: Vec<String>,
    /// MX host name suffixes, e.g. `".google.com"` (`"*.google.com"` is
    /// the same).
    #[serde(default)]
    pub mx_suffix: Vec<String>,
    /// `false`: the receivers' MTA-STS policy is not applied to mail this
    /// rule fits (a receiver whose policy is known to be broken; counted
    /// as `ringpost_mta_sts_lookups_total{result="ignored"}`).
    #[serde(default = "yes")]
    pub mta_sts: bool,
    /// `false`: the receivers' DANE TLSA records are not looked up for mail
    /// this rule fits (counted as
    /// `ringpost_dane_tlsa_lookups_total{result="ignored"}`).
    #[serde(default = "yes")]
    pub dane: bool,
    #[serde(flatten)]
    pub limits: Overrides,
    /// Per egress source overrides, by source name.
    #[serde(default)]
    pub source: BTreeMap<String, Overrides>,
}

fn yes() -> bool {
    true
}

impl Limits {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// The TLS policy for a destination whose `[tls]` policy is
    /// `configured`: the stricter of the two (`none` < `opportunistic` <
    /// `require`), except that a destination set to `none` by the
    /// operator stays plaintext unless the rule requires TLS.
    pub fn tls_policy(&self, configured: OutboundTls) -> OutboundTls {
        match (configured, self.tls) {
            (_, Some(OutboundTls::Require)) => OutboundTls::Require,
            (OutboundTls::None, Some(OutboundTls::Opportunistic)) => OutboundTls::Opportunistic,
            (configured, _) => configured,
        }
    }
}

/// The rules, the operator's before ringpost's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shaping {
    rules: Vec<Rule>,
}

impl Shaping {
    /// From shaping files in order, each `(name, text)`; the name is for
    /// error messages. Every rule is checked.
    pub fn parse(files: &[(&str, &str)]) -> Result<Shaping, ShapingError> {
        let mut rules = Vec::new();
        let mut problems = Vec::new();
        for (file, text) in files {
            match parse_file(text) {
                Ok(parsed) => rules.extend(parsed),
                Err(found) => problems.extend(found.into_iter().map(|p| format!("{file}: {p}"))),
            }
        }
        match problems.is_empty() {
            true => Ok(Shaping { rules }),
            false => Err(ShapingError(problems)),
        }
    }

    /// The operator's file (if `path` is not empty), then ringpost's
    /// rules: what `delivery.shaping_file` names, read now.
    pub fn load(path: &str) -> Result<Shaping, String> {
        let own = match path {
            "" => None,
            p => Some(std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"))?),
        };
        let mut files = Vec::new();
        if let Some(text) = &own {
            files.push((path, text.as_str()));
        }
        files.push(("ringpost's default shaping rules", DEFAULT_SHAPING));
        Shaping::parse(&files).map_err(|e| e.to_string())
    }

    /// The rules that turn off a receiver's MTA-STS policy or DANE
    /// records, as a line for the log (None: no rule does).
    pub fn tls_exemptions(&self) -> Option<String> {
        let named: Vec<String> = self
            .rules
            .iter()
            .filter(|r| !(r.mta_sts && r.dane))
            .map(|r| {
                let off: Vec<&str> = [(r.mta_sts, "mta_sts"), (r.dane, "dane")]
                    .into_iter()
                    .filter_map(|(on, name)| (!on).then_some(name))
                    .collect();
                format!("{} ({} = false)", r.name, off.join(", "))
            })
            .collect();
        (!named.is_empty()).then(|| {
            format!(
                "receivers' TLS policies not applied by shaping rules: {}",
                named.join("; ")
            )
        })
    }

    /// The first rule that fits mail to `domain` (lower-case) through the
    /// MX hosts `hosts`.
    pub fn rule_for<'a>(&'a self, domain: &str, hosts: &[&str]) -> Option<&'a Rule> {
        self.rules.iter().find(|r| {
            r.domains.iter().any(|d| d == domain)
                || r.mx_suffix.iter().any(|suffix| {
                    hosts.iter().any(|h| {
                        let h = h.trim_end_matches('.');
                        h.len() > suffix.len()
                            && h.is_char_boundary(h.len() - suffix.len())
                            && h[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    })
                })
        })
    }

    /// The limits of the path from `source` under `rule`, over `base`
    /// (`[delivery]`'s).
    pub fn limits(rule: Option<&Rule>, source: Option<&str>, base: &Limits) -> Limits {
        let mut limits = base.clone();
        if let Some(rule) = rule {
            limits.apply(&rule.limits);
            if let Some(o) = source.and_then(|s| rule.source.get(s)) {
                limits.apply(o);
            }
        }
        limits
    }

    /// Whether some rule requires verified TLS (the CA bundle is then
    /// loaded at start-up).
    pub fn requires_tls(&self) -> bool {
        self.rules.iter().any(|r| {
            r.limits.tls == Some(OutboundTls::Require)
                || r.source
                    .values()
                    .any(|o| o.tls == Some(OutboundTls::Require))
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

/// One file's rules, or every problem in it: a syntax error (with its
/// line), else each `[[site]]` table that does not make a valid rule, by
/// the line of the key the problem names (else of the table's header) and
/// the rule's name. Each table is read on its own (a
/// rule's limits are flattened into it, which loses the positions of
/// serde's errors), so one bad rule does not hide the next.
fn parse_file(text: &str) -> Result<Vec<Rule>, Vec<String>> {
    let table: toml::Table = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
    let doc = toml_edit::ImDocument::parse(text).ok();
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let mut problems = Vec::new();
    for key in table.keys().filter(|k| *k != "site") {
        let at = doc
            .as_ref()
            .and_then(|d| d.as_table().key(key)?.span())
            .map_or(String::new(), |s| format!("line {}: ", line_of(s.start)));
        problems.push(format!(
            "{at}unknown key `{key}` (rules are [[site]] tables)"
        ));
    }
    let sites = match table.get("site") {
        None => Vec::new(),
        Some(toml::Value::Array(sites)) => sites.clone(),
        Some(_) => return Err(vec!["`site` must be [[site]] tables".into()]),
    };
    let tables: Vec<&toml_edit::Table> = doc
        .as_ref()
        .and_then(|d| d.get("site")?.as_array_of_tables())
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let mut rules = Vec::new();
    for (i, value) in sites.into_iter().enumerate() {
        let name = value
            .get("name")
            .and_then(|n| n.as_str())
            .map_or(format!("site #{}", i + 1), |n| format!("site \"{n}\""));
        let problem = match Rule::deserialize(value) {
            Ok(mut rule) => match check(&rule) {
                Some(problem) => problem,
                None => {
                    normalise(&mut rule);
                    rules.push(rule);
                    continue;
                }
            },
            Err(e) => e.to_string().trim().to_string(),
        };
        let at = tables
            .get(i)
            .and_then(|t| key_offset(t, &problem).or(t.span().map(|s| s.start)))
            .map_or(String::new(), |o| format!("line {}: ", line_of(o)));
        problems.push(format!("{at}{name}: {problem}"));
    }
    match problems.is_empty() {
        true => Ok(rules),
        false => Err(problems),
    }
}

/// Where in the file the key a problem names is (`unknown field
/// \`max_conections\``, `max_connections must be ...`, `source "s":
/// ...` for a key of that source's table): the longest key of the
/// `[[site]]` table, or of the source's, named as a whole word.
fn key_offset(site: &toml_edit::Table, problem: &str) -> Option<usize> {
    let (table, problem) = match problem
        .strip_prefix("source \"")
        .and_then(|p| p.split_once("\": "))
    {
        Some((source, rest)) => (
            site.get("source")?
                .as_table_like()?
                .get(source)?
                .as_table_like()?,
            rest,
        ),
        None => (site as &dyn toml_edit::TableLike, problem),
    };
    let named = |key: &str| {
        problem.match_indices(key).any(|(at, _)| {
            let word = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
            !word(at.checked_sub(1).and_then(|i| problem.as_bytes().get(i)))
                && !word(problem.as_bytes().get(at + key.len()))
        })
    };
    table
        .iter()
        .filter(|(key, _)| named(key))
        .max_by_key(|(key, _)| key.len())
        .and_then(|(key, _)| table.key(key)?.span())
        .map(|s| s.start)
}

fn check(rule: &Rule) -> Option<String> {
    if rule.name.is_empty() || rule.name.contains(char::is_whitespace) {
        return Some("needs a name without spaces".into());
    }
    if rule.domains.is_empty() && rule.mx_suffix.is_empty() {
        return Some("needs `domains` or `mx_suffix`".into());
    }
    if rule
        .mx_suffix
        .iter()
        .any(|s| s.trim_start_matches('*').len() < 2)
    {
        return Some("an `mx_suffix` must name a domain, e.g. \".google.com\"".into());
    }
    for (who, o) in std::iter::once(("", &rule.limits))
        .chain(rule.source.iter().map(|(name, o)| (name.as_str(), o)))
    {
        let at = |what: &str| match who {
            "" => what.to_string(),
            s => format!("source \"{s}\": {what}"),
        };
        if let Some(problem) = check_overrides(o) {
            return Some(at(&problem));
        }
    }
    None
}

/// Lower-case domains; suffixes as ".example.com".
fn normalise(rule: &mut Rule) {
    for d in &mut rule.domains {
        *d = d.trim_end_matches('.').to_ascii_lowercase();
    }
    for s in &mut rule.mx_suffix {
        let bare = s.trim_start_matches('*').trim_start_matches('.');
        *s = format!(".{}", bare.trim_end_matches('.').to_ascii_lowercase());
    }
}

/// Pure: the site of a destination whose targets are `hosts` (in
/// preference order, repeats allowed): its distinct host names, lower
/// case, sorted, joined by commas. Domains with the same MX hosts share a
/// site, whatever the order or preferences of their records.
pub fn site_name<'a>(hosts: impl IntoIterator<Item = &'a str>) -> String {
    let mut names: Vec<String> = hosts
        .into_iter()
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    names.sort_unstable();
    names.dedup();
    names.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Limits {
        Limits::of(&DeliveryConfig::default())
    }

    #[test]
    fn a_rule_may_turn_off_a_receivers_tls_policy() {
        let s = Shaping::parse(&[(
            "f",
            "[[site]]\nname = \"broken\"\ndomains = [\"broken.example\"]\nmta_sts = false\n\
             [[site]]\nname = \"nodane\"\ndomains = [\"b.example\"]\ndane = false\n\
             [[site]]\nname = \"plain\"\ndomains = [\"c.example\"]\n",
        )])
        .unwrap();
        let broken = s.rule_for("broken.example", &[]).unwrap();
        assert!(!broken.mta_sts && broken.dane);
        let plain = s.rule_for("c.example", &[]).unwrap();
        assert!(
            plain.mta_sts && plain.dane,
            "on unless a rule says otherwise"
        );
        assert_eq!(
            s.tls_exemptions().unwrap(),
            "receivers' TLS policies not applied by shaping rules: broken (mta_sts = false); nodane (dane = false)"
        );
        assert_eq!(Shaping::load("").unwrap().tls_exemptions(), None);
    }

    #[test]
    fn the_shipped_rules_parse_and_name_the_large_providers() {
        let s = Shaping::load("").unwrap();
        let google = s.rule_for("gmail.com", &["gmail-smtp-in.l.google.com."]);
        assert_eq!(google.unwrap().name, "google");
        let yahoo = s.rule_for("yahoo.com", &["mta5.am0.yahoodns.net"]);
        assert_eq!(yahoo.unwrap().name, "yahoo");
        let ms = s.rule_for("outlook.com", &["outlook-com.olc.protection.outlook.com"]);
        assert_eq!(ms.unwrap().name, "outlook");
        assert!(s.rule_for("example.org", &["mx.example.org"]).is_none());
    }

    #[test]
    fn the_operators_rules_come_first_and_sources_override_them() {
        let own = r#"
            [[site]]
            name = "g"
            mx_suffix = ["*.google.com"]
            max_connections = 3
            max_messages_per_second = 10
            [site.source.ip2]
            max_connections = 1
            tls = "require"
        "#;
        let s = Shaping::parse(&[("own", own), ("default", DEFAULT_SHAPING)]).unwrap();
        let rule = s.rule_for("x.test", &["ASPMX.L.GOOGLE.COM"]);
        assert_eq!(rule.unwrap().name, "g");
        let l = Shaping::limits(rule, Some("ip1"), &base());
        assert_eq!((l.max_connections, l.max_messages_per_second), (3, 10.0));
        let l = Shaping::limits(rule, Some("ip2"), &base());
        assert_eq!((l.max_connections, l.max_messages_per_second), (1, 10.0));
        assert_eq!(l.tls, Some(OutboundTls::Require));
        assert!(s.requires_tls());
        // "google.com" itself is not a host under ".google.com".
        assert!(s.rule_for("x.test", &["google.com"]).is_none());
        assert_eq!(Shaping::limits(None, Some("ip2"), &base()), base());
    }

    #[test]
    fn bad_rules_are_refused_with_their_name() {
        for (text, want) in [
            ("[[site]]\nname = \"a\"\n", "needs `domains` or `mx_suffix`"),
            (
                "[[site]]\nname = \"a\"\ndomains = [\"x\"]\nmax_connections = 0\n",
                "max_connections",
            ),
            (
                "[[site]]\nname = \"a\"\ndomains = [\"x\"]\ntls = \"none\"\n",
                "never weakens TLS",
            ),
            (
                "[[site]]\nname = \"a\"\ndomains = [\"x\"]\n[site.source.s]\nmax_messages_per_second = -1\n",
                "source \"s\"",
            ),
            ("[[site]]\nname = \"a\"\nfrobnicate = 1\n", "frobnicate"),
        ] {
            let e = Shaping::parse(&[("f.toml", text)]).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
            assert!(e.starts_with("f.toml"), "{e}");
        }
    }

    #[test]
    fn every_bad_rule_is_reported_with_its_line_and_name() {
        let text = "# limits\n\n[[site]]\nname = \"ok\"\ndomains = [\"x\"]\n\n\
                    [[site]]\nname = \"gmail\"\nmx_suffix = [\".google.com\"]\nmax_conections = 3\n\n\
                    [[site]]\nname = \"yahoo\"\ndomains = [\"yahoo.com\"]\nmax_connections = 0\n\n\
                    [[site]]\ndomains = [\"y\"]\n";
        let e = Shaping::parse(&[("f.toml", text)]).unwrap_err().to_string();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 3, "{e}");
        assert!(
            lines[0].starts_with("f.toml: line 10: site \"gmail\": ")
                && lines[0].contains("max_conections"),
            "{e}"
        );
        assert!(
            lines[1].starts_with("f.toml: line 15: site \"yahoo\": max_connections"),
            "{e}"
        );
        assert!(lines[2].starts_with("f.toml: line 17: site #4: "), "{e}");
        // A key of a source's table: its own line.
        let e = Shaping::parse(&[(
            "f.toml",
            "[[site]]\nname = \"a\"\ndomains = [\"x\"]\nidle_timeout_secs = 5\n[site.source.s]\nidle_timeout_secs = 0\n",
        )])
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("f.toml: line 6: site \"a\": source \"s\": idle_timeout_secs"),
            "{e}"
        );
        // A syntax error: toml's message, with its line.
        let e = Shaping::parse(&[("f.toml", "[[site]]\nname = \n")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.toml: ") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn tls_is_only_ever_raised() {
        use OutboundTls::*;
        let mut l = base();
        assert_eq!(l.tls_policy(Require), Require);
        l.tls = Some(Opportunistic);
        assert_eq!(l.tls_policy(Require), Require);
        assert_eq!(l.tls_policy(None), Opportunistic);
        l.tls = Some(Require);
        assert_eq!(l.tls_policy(None), Require);
        assert_eq!(l.tls_policy(Opportunistic), Require);
    }

    #[test]
    fn domains_with_the_same_mx_hosts_share_a_site() {
        let a = site_name(["mx2.x.test.", "MX1.x.test", "mx2.x.test"]);
        let b = site_name(["mx1.x.test", "mx2.x.test"]);
        assert_eq!(a, "mx1.x.test,mx2.x.test");
        assert_eq!(a, b);
        assert_ne!(a, site_name(["mx1.x.test"]));
    }
}
