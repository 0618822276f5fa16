//! CRIU's configuration files: which are read, in which order, and their syntax.
//!
//! Order (each later source overrides the earlier ones, lists accumulate):
//! `/etc/criu/default.conf`, `$HOME/.criu/default.conf` (both skipped with
//! `--no-default-config` or `--config FILE` on the command line), the file named by
//! `$CRIU_CONFIG_FILE`, the `--config FILE`, then the command line. In RPC mode the request's
//! options come after the default files, and the request's `config_file` last of all. A file
//! that does not exist is skipped, as CRIU skips it.
//!
//! Syntax: one option per line, its long name without the dashes, then its argument after
//! white space, in double quotes if it holds white space (`\"` for a quote); `#` starts a
//! comment. `tcp-established`, `work-dir "/a b/c"`, `no-restore-sibling # comment`.

use std::path::{Path, PathBuf};

use super::getopt::{self, Event, GetoptError};

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}, line {line}: unsupported format ({why}); see criu(8), CONFIGURATION FILES")]
    Syntax {
        path: PathBuf,
        line: usize,
        why: &'static str,
    },
    #[error("configuration file {path}: {source}")]
    Option {
        path: PathBuf,
        #[source]
        source: GetoptError,
    },
    #[error("configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The system-wide file.
pub const GLOBAL: &str = "/etc/criu/default.conf";

/// The files to read before the command line, in order. `no_default`: the command line had
/// `--no-default-config` or `--config`; `cmdline`: its `--config FILE`.
pub fn sources(no_default: bool, cmdline: Option<&str>) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if !no_default {
        v.push(PathBuf::from(GLOBAL));
        if let Some(home) = std::env::var_os("HOME") {
            v.push(Path::new(&home).join(".criu/default.conf"));
        }
    }
    if let Some(env) = std::env::var_os("CRIU_CONFIG_FILE") {
        v.push(PathBuf::from(env));
    }
    if let Some(c) = cmdline {
        v.push(PathBuf::from(c));
    }
    v
}

/// One of the default files (not a file named by `--config` or $CRIU_CONFIG_FILE).
fn is_default(path: &Path) -> bool {
    path == Path::new(GLOBAL)
        || std::env::var_os("HOME")
            .is_some_and(|h| path == Path::new(&h).join(".criu/default.conf"))
}

/// One statement (line) as command-line words: `--NAME` and, if present, its argument.
fn statement(line: &str) -> Result<Vec<String>, &'static str> {
    let s = line.trim_start();
    let s = s.strip_suffix('\n').unwrap_or(s);
    if s.is_empty() || s.starts_with('#') {
        return Ok(Vec::new());
    }
    let Some(sep) = s.find([' ', '\t']) else {
        return Ok(vec![format!("--{s}")]);
    };
    let name = format!("--{}", &s[..sep]);
    let rest = s[sep + 1..].trim_start();
    if rest.starts_with('#') {
        return Ok(vec![name]);
    }
    if rest.is_empty() {
        return Ok(vec![name]);
    }
    if let Some(q) = rest.strip_prefix('"') {
        // Up to the next quote not preceded by a backslash; `\"` stands for a quote.
        let b = q.as_bytes();
        let mut end = None;
        for i in 0..b.len() {
            if b[i] == b'"' && (i == 0 || b[i - 1] != b'\\') {
                end = Some(i);
                break;
            }
        }
        let end = end.ok_or("a quoted argument has no closing quote")?;
        let after = q[end + 1..].trim_start();
        if !(after.is_empty() || after.starts_with('#')) {
            return Err("more than one argument after a quoted one");
        }
        return Ok(vec![name, q[..end].replace("\\\"", "\"")]);
    }
    let value = rest.split('#').next().unwrap_or("").trim_end();
    if value.contains([' ', '\t']) {
        return Err("more than one argument (quote an argument that holds spaces)");
    }
    Ok(vec![name, value.replace("\\\"", "\"")])
}

/// The options of one configuration file; `None` if it does not exist.
pub fn read(path: &Path) -> Result<Option<Vec<Event>>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // A default file this user may not read (root's $HOME, for a cryo run by another
        // user with root's environment) is skipped, as CRIU skips any it cannot open.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && is_default(path) => {
            tracing::debug!(path = %path.display(), "default configuration file not readable: skipped");
            return Ok(None);
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.into(),
                source,
            })
        }
    };
    parse(path, &text).map(Some)
}

/// The options of a configuration file's text. `config`, `no-default-config` and words that
/// are no option's argument are ignored, as CRIU ignores them there.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Event>, ConfigError> {
    let mut words = Vec::new();
    for (n, line) in text.lines().enumerate() {
        words.extend(statement(line).map_err(|why| ConfigError::Syntax {
            path: path.into(),
            line: n + 1,
            why,
        })?);
    }
    let parsed = getopt::tokenize(&words).map_err(|source| ConfigError::Option {
        path: path.into(),
        source,
    })?;
    for w in &parsed.operands {
        tracing::debug!(
            "{}: ignoring the word {w:?} (no option takes it)",
            path.display()
        );
    }
    Ok(parsed
        .events
        .into_iter()
        .filter(|e| {
            !matches!(
                e.spec.kind,
                getopt::Kind::Config | getopt::Kind::NoDefaultConfig
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(l: &str) -> Vec<String> {
        statement(l).unwrap()
    }

    #[test]
    fn statements_like_criu() {
        assert!(words("").is_empty());
        assert!(words("   # a comment").is_empty());
        assert_eq!(words("tcp-established"), ["--tcp-established"]);
        assert_eq!(words("  verbosity 4"), ["--verbosity", "4"]);
        assert_eq!(words("log-file x.log # why"), ["--log-file", "x.log"]);
        assert_eq!(words("log-file x.log#why"), ["--log-file", "x.log"]);
        assert_eq!(words("no-restore-sibling   # c"), ["--no-restore-sibling"]);
        assert_eq!(
            words(r#"work-dir "/home/u/criu/my \"work\" directory""#),
            ["--work-dir", r#"/home/u/criu/my "work" directory"#]
        );
        assert_eq!(words(r#"lsm-profile "" "#), ["--lsm-profile", ""]);
        assert_eq!(words("root\t/x"), ["--root", "/x"]);
        assert!(statement("log-file a b").is_err());
        assert!(statement("log-file \"a b").is_err());
        assert!(statement("log-file \"a b\" c").is_err());
    }

    #[test]
    fn file_options() {
        let ev = parse(
            Path::new("t.conf"),
            "# runc.conf\ntcp-established\nlog-file from-conf.log\nconfig /elsewhere\nverbosity 4\n",
        )
        .unwrap();
        let names: Vec<_> = ev.iter().map(|e| e.spec.long).collect();
        assert_eq!(names, ["tcp-established", "log-file", "verbosity"]);
        // `verbosity 4`: getopt does not take a separate word for an optional argument, so
        // this is one step up, as in CRIU.
        assert_eq!(getopt::verbosity(&ev), 3);
        assert!(matches!(
            parse(Path::new("t.conf"), "frobnicate\n"),
            Err(ConfigError::Option { .. })
        ));
    }
}
