//! CRIU's command-line grammar, as `getopt_long` reads it for CRIU: the table of every CRIU
//! 4.2 option (long name, short letter, argument), GNU getopt's rules (options and the
//! command in any order, `--opt=val` / `--opt val` / `-tVAL` / `-t VAL`, clustered short
//! flags `-dR`, optional arguments only attached (`-v4`, `--verbosity=4`,
//! `--manage-cgroups=full`), unambiguous abbreviations of long names, `--` ending the
//! options), CRIU's `--no-X` form of its boolean options, and CRIU's precedence (for each
//! option the last occurrence wins, list options accumulate).
//!
//! [`tokenize`] turns one argument vector (the command line, or a configuration file's
//! statements) into [`Event`]s; [`Resolved`] folds the events of every source, in CRIU's
//! order, into final values and writes them out as one canonical argument list that the
//! clap definitions in `cli/mod.rs` parse (long names only, each option at most once unless
//! it is a list).

use std::collections::BTreeMap;

/// Whether an option takes an argument (getopt's `has_arg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HasArg {
    No,
    Required,
    /// Only attached: `-v4`, `--verbosity=4`; a separate word is not taken.
    Optional,
}

/// How repeated occurrences combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// CRIU's `BOOL_OPT`: `--X` sets, `--no-X` clears; the last one wins.
    Bool,
    /// A switch with no `--no-` form.
    Switch,
    /// One value; the last one wins.
    Value,
    /// Every occurrence is kept, in order.
    List,
    /// `-v`, `-vv`, `-vN`, `--verbosity[=N]`: counted from the default level 2.
    Verbosity,
    /// `-R` / `-s`: what becomes of the tree after a dump (the last one wins).
    FinalState,
    /// `--all`: `--extra` and `--experimental`.
    All,
    /// `-h` / `--help`.
    Help,
    /// `-V` / `--version`.
    Version,
    /// `--config FILE` (read before the command line; ignored inside configuration files).
    Config,
    /// `--no-default-config` (only the command line's counts).
    NoDefaultConfig,
    /// `--ms`: refused, as CRIU refuses it.
    Deprecated,
}

/// One CRIU option.
#[derive(Debug, PartialEq, Eq)]
pub struct Spec {
    pub long: &'static str,
    pub short: Option<char>,
    pub arg: HasArg,
    pub kind: Kind,
    /// The name clap knows it by (`--daemon` is `--restore-detached`).
    pub canon: &'static str,
}

macro_rules! spec {
    ($long:literal, $short:expr, $arg:ident, $kind:ident) => {
        Spec {
            long: $long,
            short: $short,
            arg: HasArg::$arg,
            kind: Kind::$kind,
            canon: $long,
        }
    };
    ($long:literal, $short:expr, $arg:ident, $kind:ident, $canon:literal) => {
        Spec {
            long: $long,
            short: $short,
            arg: HasArg::$arg,
            kind: Kind::$kind,
            canon: $canon,
        }
    };
}

/// Every option CRIU 4.2 accepts (`criu/config.c`), in its order, plus cryo's own two
/// (`--json`, `--orphan-pts-master`, which CRIU has over RPC only).
pub static OPTIONS: &[Spec] = &[
    spec!("tree", Some('t'), Required, Value),
    spec!("leave-stopped", Some('s'), No, FinalState),
    spec!("leave-running", Some('R'), No, FinalState),
    spec!("restore-detached", Some('d'), No, Bool),
    spec!("restore-sibling", Some('S'), No, Bool),
    spec!("daemon", None, No, Bool, "restore-detached"),
    spec!("images-dir", Some('D'), Required, Value),
    spec!("work-dir", Some('W'), Required, Value),
    spec!("log-file", Some('o'), Required, Value),
    spec!("join-ns", Some('J'), Required, List),
    spec!("root", Some('r'), Required, Value),
    spec!("ext-unix-sk", Some('x'), Optional, List),
    spec!("help", Some('h'), No, Help),
    spec!("tcp-established", None, No, Bool),
    spec!("close", None, Required, List),
    spec!("log-pid", None, No, Bool),
    spec!("version", Some('V'), No, Version),
    spec!("evasive-devices", None, No, Bool),
    spec!("pidfile", None, Required, Value),
    spec!("veth-pair", None, Required, List),
    spec!("action-script", None, Required, List),
    spec!("link-remap", None, No, Bool),
    spec!("shell-job", Some('j'), No, Bool),
    spec!("file-locks", Some('l'), No, Bool),
    spec!("page-server", None, No, Bool),
    spec!("address", None, Required, Value),
    spec!("port", None, Required, Value),
    spec!("prev-images-dir", None, Required, Value),
    spec!("ms", None, No, Deprecated),
    spec!("track-mem", None, No, Bool),
    spec!("auto-dedup", None, No, Bool),
    spec!("libdir", Some('L'), Required, Value),
    spec!("cpu-cap", None, Optional, List),
    spec!("force-irmap", None, No, Bool),
    spec!("ext-mount-map", Some('M'), Required, List),
    spec!("exec-cmd", None, No, Switch),
    spec!("manage-cgroups", None, Optional, Value),
    spec!("cgroup-root", None, Required, List),
    spec!("inherit-fd", None, Required, List),
    spec!("feature", None, Required, Value),
    spec!("skip-mnt", None, Required, List),
    spec!("enable-fs", None, Required, List),
    spec!("enable-external-sharing", None, No, Switch),
    spec!("enable-external-masters", None, No, Switch),
    spec!("freeze-cgroup", None, Required, Value),
    spec!("ghost-limit", None, Required, Value),
    spec!("irmap-scan-path", None, Required, List),
    spec!("lsm-profile", None, Required, Value),
    spec!("timeout", None, Required, Value),
    spec!("external", None, Required, List),
    spec!("empty-ns", None, Required, List),
    spec!("lazy-pages", None, No, Switch),
    spec!("extra", None, No, Bool),
    spec!("experimental", None, No, Bool),
    spec!("all", None, No, All),
    spec!("cgroup-props", None, Required, Value),
    spec!("cgroup-props-file", None, Required, Value),
    spec!("cgroup-dump-controller", None, Required, List),
    spec!("skip-in-flight", None, No, Bool),
    spec!("deprecated", None, No, Bool),
    spec!("display-stats", None, No, Bool),
    spec!("weak-sysctls", None, No, Bool),
    spec!("status-fd", None, Required, Value),
    spec!("tcp-close", None, No, Bool),
    spec!("verbosity", Some('v'), Optional, Verbosity),
    spec!("ps-socket", None, Required, Value),
    spec!("stream", None, No, Bool),
    spec!("config", None, Required, Config),
    spec!("no-default-config", None, No, NoDefaultConfig),
    spec!("tls-cacert", None, Required, Value),
    spec!("tls-cacrl", None, Required, Value),
    spec!("tls-cert", None, Required, Value),
    spec!("tls-key", None, Required, Value),
    spec!("tls", None, No, Bool),
    spec!("tls-no-cn-verify", None, No, Switch),
    spec!("cgroup-yard", None, Required, Value),
    spec!("pre-dump-mode", None, Required, Value),
    spec!("file-validation", None, Required, Value),
    spec!("skip-file-rwx-check", None, No, Bool),
    spec!("lsm-mount-context", None, Required, Value),
    spec!("network-lock", None, Required, Value),
    spec!("mntns-compat-mode", None, No, Bool),
    spec!("unprivileged", None, No, Bool),
    spec!("ghost-fiemap", None, No, Bool),
    spec!("allow-uprobes", None, No, Bool),
    // cryo's own.
    spec!("json", None, No, Bool),
    spec!("to", None, Required, Value),
    spec!("max-rounds", None, Required, Value),
    spec!("orphan-pts-master", None, No, Bool),
];

/// The option named `long` (exactly).
pub fn spec(long: &str) -> Option<&'static Spec> {
    OPTIONS.iter().find(|s| s.long == long)
}

/// One option as it appeared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub spec: &'static Spec,
    /// `--no-X`.
    pub negated: bool,
    pub value: Option<String>,
}

/// What one argument vector holds.
#[derive(Debug, Default, Clone)]
pub struct Parsed {
    pub events: Vec<Event>,
    /// The words that are not options (the command and its operands), in order.
    pub operands: Vec<String>,
}

/// What getopt refuses, worded as glibc's getopt words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GetoptError {
    #[error("unrecognized option '{0}'")]
    Unrecognized(String),
    #[error("invalid option -- '{0}'")]
    InvalidShort(char),
    #[error("option '{given}' is ambiguous; possibilities: {}", .candidates.iter().map(|c| format!("'--{c}'")).collect::<Vec<_>>().join(" "))]
    Ambiguous {
        given: String,
        candidates: Vec<String>,
    },
    #[error("option '{0}' requires an argument")]
    MissingArg(String),
    #[error("option '{0}' doesn't allow an argument")]
    UnexpectedArg(String),
}

/// Finds a long option by its name or an unambiguous abbreviation (glibc: an exact name wins;
/// several prefixes are ambiguous unless they all mean the same option).
fn find_long(name: &str) -> Result<(&'static Spec, bool), GetoptError> {
    let names = || {
        OPTIONS.iter().flat_map(|s| {
            let neg = (s.kind == Kind::Bool).then_some((s, true));
            std::iter::once((s, false)).chain(neg)
        })
    };
    let full = |s: &Spec, neg: bool| {
        if neg {
            format!("no-{}", s.long)
        } else {
            s.long.to_string()
        }
    };
    if let Some((s, neg)) = names().find(|(s, neg)| full(s, *neg) == name) {
        return Ok((s, neg));
    }
    let hits: Vec<(&'static Spec, bool)> = names()
        .filter(|(s, neg)| full(s, *neg).starts_with(name))
        .collect();
    match hits.as_slice() {
        [] => Err(GetoptError::Unrecognized(format!("--{name}"))),
        [(s, neg), rest @ ..]
            if rest
                .iter()
                .all(|(t, n)| t.canon == s.canon && t.arg == s.arg && n == neg) =>
        {
            Ok((s, *neg))
        }
        _ => Err(GetoptError::Ambiguous {
            given: format!("--{name}"),
            candidates: hits.iter().map(|(s, n)| full(s, *n)).collect(),
        }),
    }
}

/// Reads one argument vector (without the program name), as getopt_long with CRIU's option
/// table and GNU argument permutation does.
pub fn tokenize(args: &[String]) -> Result<Parsed, GetoptError> {
    let mut out = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            out.operands.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(body) = a.strip_prefix("--") {
            let (name, attached) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let (spec, negated) = find_long(name)?;
            let shown = format!("--{}{}", if negated { "no-" } else { "" }, spec.long);
            let value = match (spec.arg, negated, attached) {
                (HasArg::No, _, Some(_)) | (_, true, Some(_)) => {
                    return Err(GetoptError::UnexpectedArg(shown))
                }
                (HasArg::No, _, None) | (_, true, None) => None,
                (HasArg::Optional, _, v) => v,
                (HasArg::Required, _, Some(v)) => Some(v),
                (HasArg::Required, _, None) => {
                    let v = args
                        .get(i)
                        .cloned()
                        .ok_or_else(|| GetoptError::MissingArg(shown.clone()))?;
                    i += 1;
                    Some(v)
                }
            };
            out.events.push(Event {
                spec,
                negated,
                value,
            });
            continue;
        }
        if a.len() > 1 && a.starts_with('-') {
            // A cluster of short options: `-dR`, `-t42`, `-v4`, `-vvv`.
            let chars: Vec<char> = a[1..].chars().collect();
            let mut k = 0;
            while k < chars.len() {
                let c = chars[k];
                k += 1;
                let spec = OPTIONS
                    .iter()
                    .find(|s| s.short == Some(c))
                    .ok_or(GetoptError::InvalidShort(c))?;
                let rest: String = chars[k..].iter().collect();
                let value = match spec.arg {
                    HasArg::No => None,
                    HasArg::Optional => {
                        k = chars.len();
                        (!rest.is_empty()).then_some(rest)
                    }
                    HasArg::Required => {
                        k = chars.len();
                        if rest.is_empty() {
                            let v = args
                                .get(i)
                                .cloned()
                                .ok_or_else(|| GetoptError::MissingArg(format!("-{c}")))?;
                            i += 1;
                            Some(v)
                        } else {
                            Some(rest)
                        }
                    }
                };
                out.events.push(Event {
                    spec,
                    negated: false,
                    value,
                });
            }
            continue;
        }
        out.operands.push(a.clone());
    }
    Ok(out)
}

/// The log level CRIU ends with after `events` (from its default, 2): `-v`/`--verbosity`
/// add one, `-vvv` adds one per `v`, `-vN`/`--verbosity=N` set N (C's `atoi`, so
/// `-verbosity=0`, which zdtm passes, is `-v` with "erbosity=0": level 0).
pub fn verbosity<'a>(events: impl IntoIterator<Item = &'a Event>) -> u32 {
    let mut level: u32 = 2;
    for e in events {
        if e.spec.kind != Kind::Verbosity {
            continue;
        }
        level = match e.value.as_deref() {
            None => level + 1,
            Some(v) if v.starts_with('v') => level
                .saturating_add(u32::try_from(v.len()).unwrap_or(u32::MAX))
                .saturating_add(1),
            Some(v) => atoi(v),
        };
    }
    level
}

/// C's `atoi` on a non-negative level: leading digits, else 0.
fn atoi(s: &str) -> u32 {
    let t = s.trim_start();
    let digits: String = t.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().unwrap_or(0)
}

/// The final value of every option after all events, in CRIU's precedence.
#[derive(Debug, Default, Clone)]
pub struct Resolved {
    /// Bool and switch options that end up set (by clap name).
    pub flags: BTreeMap<&'static str, bool>,
    /// Single-value options (by clap name).
    pub values: BTreeMap<&'static str, Option<String>>,
    /// List options, every value in order (by clap name).
    pub lists: BTreeMap<&'static str, Vec<Option<String>>>,
    pub verbosity: u32,
    pub final_state: Option<&'static str>,
    pub help: bool,
    pub version: bool,
    pub deprecated_ms: bool,
}

impl Resolved {
    /// Folds events, earlier sources first.
    pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event> + Clone) -> Resolved {
        let mut r = Resolved {
            verbosity: verbosity(events.clone()),
            ..Default::default()
        };
        for e in events {
            let s = e.spec;
            match s.kind {
                Kind::Bool => {
                    r.flags.insert(s.canon, !e.negated);
                }
                Kind::Switch => {
                    r.flags.insert(s.canon, true);
                }
                Kind::All => {
                    r.flags.insert("extra", true);
                    r.flags.insert("experimental", true);
                }
                Kind::Value => {
                    r.values.insert(s.canon, e.value.clone());
                }
                Kind::List => r.lists.entry(s.canon).or_default().push(e.value.clone()),
                Kind::FinalState => r.final_state = Some(s.canon),
                Kind::Help => r.help = true,
                Kind::Version => r.version = true,
                Kind::Deprecated => r.deprecated_ms = true,
                Kind::Verbosity | Kind::Config | Kind::NoDefaultConfig => {}
            }
        }
        r
    }

    /// The canonical arguments for clap: `--name` for a set flag, `--name=value` for the
    /// last value of each single-value option, one `--name=value` per list element.
    pub fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, on) in &self.flags {
            if *on {
                out.push(format!("--{name}"));
            }
        }
        for (name, v) in &self.values {
            out.push(match v {
                Some(v) => format!("--{name}={v}"),
                None => format!("--{name}"),
            });
        }
        for (name, vs) in &self.lists {
            for v in vs {
                out.push(match v {
                    Some(v) => format!("--{name}={v}"),
                    None => format!("--{name}"),
                });
            }
        }
        if let Some(f) = self.final_state {
            out.push(format!("--{f}"));
        }
        out.push(format!("--verbosity={}", self.verbosity));
        out
    }

    /// The last value given for `name` (a single-value option).
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).and_then(|v| v.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(v: &[&str]) -> Result<Parsed, GetoptError> {
        tokenize(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn names(p: &Parsed) -> Vec<String> {
        p.events
            .iter()
            .map(|e| {
                format!(
                    "{}{}{}",
                    if e.negated { "no-" } else { "" },
                    e.spec.long,
                    e.value
                        .as_ref()
                        .map(|v| format!("={v}"))
                        .unwrap_or_default()
                )
            })
            .collect()
    }

    #[test]
    fn getopt_rules() {
        // Options before the command, clusters, attached and detached values.
        let p = tok(&[
            "-v4",
            "dump",
            "-dRt42",
            "-D",
            "/x",
            "--log-file=a.log",
            "-jl",
        ])
        .unwrap();
        assert_eq!(p.operands, ["dump"]);
        assert_eq!(
            names(&p),
            [
                "verbosity=4",
                "restore-detached",
                "leave-running",
                "tree=42",
                "images-dir=/x",
                "log-file=a.log",
                "shell-job",
                "file-locks"
            ]
        );
        // A required argument is the next word even when it looks like an option.
        let p = tok(&[
            "restore",
            "--root",
            "-weird",
            "--inherit-fd",
            "fd[3]:pipe:[1]",
        ])
        .unwrap();
        assert_eq!(names(&p), ["root=-weird", "inherit-fd=fd[3]:pipe:[1]"]);
        // An optional argument is never the next word.
        let p = tok(&["check", "--verbosity", "4", "--manage-cgroups", "full"]).unwrap();
        assert_eq!(p.operands, ["check", "4", "full"]);
        assert_eq!(names(&p), ["verbosity", "manage-cgroups"]);
        // `--` ends the options.
        let p = tok(&["restore", "--exec-cmd", "--", "sh", "-c", "x"]).unwrap();
        assert_eq!(p.operands, ["restore", "sh", "-c", "x"]);
        // Abbreviations: unique prefixes; the `--no-` forms.
        let p = tok(&["dump", "--tre", "7", "--leave-r", "--no-display-s"]).unwrap();
        assert_eq!(names(&p), ["tree=7", "leave-running", "no-display-stats"]);
        assert!(matches!(
            tok(&["dump", "--tcp"]),
            Err(GetoptError::Ambiguous { .. })
        ));
        // --daemon and --restore-detached are one option: not ambiguous as `--d`? (no: `--d`
        // also starts deprecated, display-stats...)
        assert!(tok(&["dump", "--d"]).is_err());
        assert_eq!(
            tok(&["x", "--frob"]).unwrap_err(),
            GetoptError::Unrecognized("--frob".into())
        );
        assert_eq!(
            tok(&["x", "-q"]).unwrap_err(),
            GetoptError::InvalidShort('q')
        );
        assert_eq!(
            tok(&["x", "--tree"]).unwrap_err(),
            GetoptError::MissingArg("--tree".into())
        );
        assert_eq!(
            tok(&["x", "--shell-job=1"]).unwrap_err(),
            GetoptError::UnexpectedArg("--shell-job".into())
        );
        // Only CRIU's boolean options have a --no- form.
        assert!(tok(&["x", "--no-tree", "1"]).is_err());
    }

    #[test]
    fn verbosity_like_criu() {
        let v = |a: &[&str]| verbosity(&tok(a).unwrap().events);
        assert_eq!(v(&["dump"]), 2);
        assert_eq!(v(&["dump", "-v"]), 3);
        assert_eq!(v(&["dump", "-vvv"]), 5);
        assert_eq!(v(&["dump", "-v4"]), 4);
        assert_eq!(v(&["dump", "-v0", "-v"]), 1);
        assert_eq!(v(&["check", "-verbosity=0"]), 0);
        assert_eq!(v(&["dump", "--verbosity=4"]), 4);
        assert_eq!(v(&["dump", "--verbosity"]), 3);
    }

    #[test]
    fn last_one_wins() {
        let p = tok(&[
            "dump",
            "-o",
            "a",
            "--log-file",
            "b",
            "--display-stats",
            "--no-display-stats",
            "-R",
            "-s",
            "--external",
            "mnt[a]:b",
            "--external",
            "mnt[c]:d",
            "--all",
            "--no-extra",
            "--daemon",
            "--no-restore-detached",
        ])
        .unwrap();
        let r = Resolved::fold(&p.events);
        assert_eq!(r.value("log-file"), Some("b"));
        assert_eq!(r.flags.get("display-stats"), Some(&false));
        assert_eq!(r.final_state, Some("leave-stopped"));
        assert_eq!(r.lists["external"].len(), 2);
        assert_eq!(r.flags.get("extra"), Some(&false));
        assert_eq!(r.flags.get("experimental"), Some(&true));
        assert_eq!(r.flags.get("restore-detached"), Some(&false));
        let args = r.to_args();
        assert!(args.contains(&"--log-file=b".to_string()));
        assert!(args.contains(&"--experimental".to_string()));
        assert!(!args
            .iter()
            .any(|a| a == "--display-stats" || a == "--extra"));
    }

    #[test]
    fn every_short_letter_of_criu() {
        // criu/config.c: "dSsRt:hD:o:v::x::Vr:jJ:lW:L:M:"
        for (c, arg) in [
            ('d', HasArg::No),
            ('S', HasArg::No),
            ('s', HasArg::No),
            ('R', HasArg::No),
            ('t', HasArg::Required),
            ('h', HasArg::No),
            ('D', HasArg::Required),
            ('o', HasArg::Required),
            ('v', HasArg::Optional),
            ('x', HasArg::Optional),
            ('V', HasArg::No),
            ('r', HasArg::Required),
            ('j', HasArg::No),
            ('J', HasArg::Required),
            ('l', HasArg::No),
            ('W', HasArg::Required),
            ('L', HasArg::Required),
            ('M', HasArg::Required),
        ] {
            let s = OPTIONS.iter().find(|s| s.short == Some(c)).unwrap();
            assert_eq!(s.arg, arg, "-{c}");
        }
    }
}
