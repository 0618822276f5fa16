//! The terminal view of a [`Report`]: the summary first, then aligned tables (the process
//! tree drawn with the PIDs), section by section. Headings are bold only when writing to a
//! terminal (and `NO_COLOR` is not set); table cells are never colored, so piping the output
//! to `grep` or `column` sees plain, aligned text.

use std::collections::HashMap;
use std::fmt::Write;

use super::model::*;
use super::source::TarSummary;

/// Bold headings or not.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn head(&self, s: &str) -> String {
        if self.color {
            format!("\x1b[1m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

/// A table: a header and rows, each column as wide as its widest cell; columns marked
/// numeric are right-aligned; the last column is not padded.
struct Table {
    head: Vec<&'static str>,
    numeric: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(cols: &[(&'static str, bool)]) -> Table {
        Table {
            head: cols.iter().map(|c| c.0).collect(),
            numeric: cols.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, r: Vec<String>) {
        self.rows.push(r);
    }

    fn render(&self, out: &mut String, indent: &str) {
        let n = self.head.len();
        let mut w: Vec<usize> = self.head.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |cells: Vec<&str>, out: &mut String| {
            let mut s = String::from(indent);
            for (i, c) in cells.iter().enumerate() {
                let pad = w[i].saturating_sub(c.chars().count());
                if i + 1 == n && !self.numeric[i] {
                    s.push_str(c);
                } else if self.numeric[i] {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                } else {
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad));
                }
                if i + 1 < n {
                    s.push_str("  ");
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        line(self.head.clone(), out);
        for r in &self.rows {
            line(r.iter().map(String::as_str).collect(), out);
        }
    }
}

/// Bytes as "12.3 MiB".
pub fn size(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn ms(us: u32) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|x| x.to_string())
        .unwrap_or_else(|| "-".into())
}

fn holders(h: &[Holder]) -> String {
    if h.is_empty() {
        return "-".into();
    }
    h.iter()
        .map(|h| format!("{}:{}", h.pid, h.fd))
        .collect::<Vec<_>>()
        .join(",")
}

/// Shell-like quoting for a command line shown on one line.
fn quote(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''").replace('\n', "\\n"))
    }
}

/// The process command: argv from memory, else `[comm]`.
fn command(p: &Process) -> String {
    match &p.argv {
        Some(a) if !a.is_empty() => a.iter().map(|s| quote(s)).collect::<Vec<_>>().join(" "),
        _ => format!("[{}]", p.comm),
    }
}

/// Processes in tree order with their tree prefix ("├─ ").
fn tree_order(ps: &[Process]) -> Vec<(String, &Process)> {
    let pids: std::collections::HashSet<u32> = ps.iter().map(|p| p.pid).collect();
    let mut kids: HashMap<u32, Vec<&Process>> = HashMap::new();
    let mut roots = Vec::new();
    for p in ps {
        if pids.contains(&p.ppid) && p.ppid != p.pid {
            kids.entry(p.ppid).or_default().push(p);
        } else {
            roots.push(p);
        }
    }
    fn walk<'a>(
        p: &'a Process,
        lead: &str,
        last: bool,
        top: bool,
        kids: &HashMap<u32, Vec<&'a Process>>,
        out: &mut Vec<(String, &'a Process)>,
    ) {
        let prefix = if top {
            String::new()
        } else {
            format!("{lead}{}", if last { "└─ " } else { "├─ " })
        };
        out.push((prefix, p));
        let next = if top {
            String::new()
        } else {
            format!("{lead}{}", if last { "   " } else { "│  " })
        };
        let ch = kids.get(&p.pid).cloned().unwrap_or_default();
        for (i, c) in ch.iter().enumerate() {
            walk(c, &next, i + 1 == ch.len(), false, kids, out);
        }
    }
    let mut out = Vec::new();
    for r in roots {
        walk(r, "", true, true, &kids, &mut out);
    }
    out
}

fn tar_line(t: &TarSummary) -> String {
    let mut s = format!(
        "{} entries: {} files ({}), {} directories",
        t.entries,
        t.files,
        size(t.bytes),
        t.dirs
    );
    if !t.deleted.is_empty() {
        s.push_str(&format!(", {} deleted", t.deleted.len()));
    }
    s
}

/// The whole report as text.
pub fn render(r: &Report, st: Style, opts: &super::Options) -> String {
    let mut o = String::new();
    if opts.summary {
        summary(r, st, &mut o);
    }
    if let Some(ps) = &r.processes {
        if opts.sections.ps {
            processes(ps, st, &mut o);
        }
        if ps.iter().any(|p| p.fds.is_some()) {
            fds(ps, st, &mut o);
        }
    }
    if let Some(p) = &r.pipes {
        if !p.is_empty() {
            pipes(p, st, &mut o);
        }
    }
    if let Some(t) = &r.ttys {
        if !t.is_empty() {
            ttys(t, st, &mut o);
        }
    }
    if let Some(s) = &r.sockets {
        sockets(s, st, &mut o);
    }
    if let Some(m) = &r.mounts {
        if !m.is_empty() {
            mounts(m, st, &mut o);
        }
    }
    if let Some(n) = &r.namespaces {
        namespaces(n, st, &mut o);
    }
    if let Some(c) = &r.cgroups {
        cgroups(c, st, &mut o);
    }
    if let Some(ps) = &r.processes {
        if ps.iter().any(|p| p.memory.is_some()) {
            memory(ps, st, &mut o);
        }
    }
    if let Some(c) = &r.container {
        container(c, st, &mut o);
    }
    if let Some(s) = &r.search {
        search(s, st, &mut o);
    }
    if !r.notes.is_empty() {
        let _ = writeln!(o, "{}", st.head("NOT READ"));
        for n in &r.notes {
            let _ = writeln!(o, "  {}: {}", n.object, n.reason);
        }
        o.push('\n');
    }
    o
}

fn summary(r: &Report, st: Style, o: &mut String) {
    let s = &r.summary;
    let src = &r.source;
    let mut what = vec![src.kind.to_string()];
    if let Some(c) = src.compression {
        what.push(format!("{c:?}").to_lowercase());
    }
    match src.container {
        super::source::Container::None => {}
        c => what.push(format!("{c:?}").to_lowercase() + " checkpoint"),
    }
    let _ = writeln!(
        o,
        "{}  {} ({})",
        st.head("CHECKPOINT"),
        src.path,
        what.join(", ")
    );
    let mut t = Table::new(&[("", false), ("", false)]);
    let mut by = s.tool.clone();
    if let Some(w) = &s.written {
        by.push_str(&format!(
            ", {w} ({})",
            s.written_from.as_deref().unwrap_or("?")
        ));
    }
    t.row(vec!["written by".into(), by]);
    t.row(vec![
        "processes".into(),
        format!(
            "{} ({} threads{}), root {}",
            s.processes,
            s.threads,
            if s.zombies > 0 {
                format!(", {} zombies", s.zombies)
            } else {
                String::new()
            },
            opt(&s.root_pid)
        ),
    ]);
    t.row(vec![
        "size".into(),
        format!(
            "{} images, {}; {} pages saved ({})",
            s.images,
            size(s.image_bytes),
            s.pages,
            size(s.page_bytes)
        ),
    ]);
    if let Some(d) = &s.stats {
        t.row(vec![
            "frozen".into(),
            format!(
                "{} (freezing {}, memory dump {}, memory write {})",
                ms(d.frozen_us),
                ms(d.freezing_us),
                ms(d.memdump_us),
                ms(d.memwrite_us)
            ),
        ]);
        t.row(vec![
            "pages".into(),
            format!(
                "{} scanned, {} written, {} left in the parent, {} lazy",
                d.pages_scanned, d.pages_written, d.pages_skipped_parent, d.pages_lazy
            ),
        ]);
    } else {
        t.row(vec!["frozen".into(), "? (no stats-dump)".into()]);
    }
    if let Some(p) = &s.parent {
        t.row(vec!["parent".into(), p.clone()]);
    }
    if let Some(n) = s.manifest_files {
        t.row(vec![
            "manifest".into(),
            format!("cryo-manifest.json lists {n} files"),
        ]);
    }
    let mut body = String::new();
    t.render(&mut body, "  ");
    // The header row of this two-column table is empty.
    o.push_str(body.split_once('\n').map(|x| x.1).unwrap_or(""));
    o.push('\n');
}

fn processes(ps: &[Process], st: Style, o: &mut String) {
    let _ = writeln!(o, "{}", st.head("PROCESSES"));
    let mut t = Table::new(&[
        ("PID", false),
        ("PPID", true),
        ("PGID", true),
        ("SID", true),
        ("STATE", false),
        ("THR", true),
        ("UID", true),
        ("COMMAND", false),
    ]);
    for (prefix, p) in tree_order(ps) {
        let state = match p.stop_signal {
            Some(s) => format!("{} (sig {s})", p.state),
            None => p.state.clone(),
        };
        t.row(vec![
            format!("{prefix}{}", p.pid),
            p.ppid.to_string(),
            p.pgid.to_string(),
            p.sid.to_string(),
            state,
            p.threads.len().to_string(),
            p.creds
                .as_ref()
                .map(|c| c.uid.to_string())
                .unwrap_or_else(|| "-".into()),
            command(p),
        ]);
    }
    t.render(o, "  ");
    o.push('\n');
    // Per-process details: paths, threads, credentials, environment.
    let any_detail = ps
        .iter()
        .any(|p| p.exe.is_some() || p.env.is_some() || p.threads.len() > 1);
    if !any_detail {
        return;
    }
    for p in ps {
        let _ = writeln!(o, "  {} {}", st.head(&p.pid.to_string()), p.comm);
        let mut t = Table::new(&[("", false), ("", false)]);
        t.row(vec!["exe".into(), opt(&p.exe)]);
        t.row(vec!["cwd".into(), opt(&p.cwd)]);
        if p.root.as_deref().is_some_and(|r| r != "/") {
            t.row(vec!["root".into(), opt(&p.root)]);
        }
        if p.threads.len() > 1 {
            t.row(vec![
                "threads".into(),
                p.threads
                    .iter()
                    .map(|t| match &t.comm {
                        Some(c) => format!("{} ({c})", t.tid),
                        None => t.tid.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ]);
        }
        if let Some(c) = &p.creds {
            t.row(vec![
                "creds".into(),
                format!(
                    "uid {} gid {} euid {} egid {}, capabilities {}{}",
                    c.uid,
                    c.gid,
                    c.euid,
                    c.egid,
                    c.cap_eff,
                    if c.no_new_privs == Some(true) {
                        ", no_new_privs"
                    } else {
                        ""
                    }
                ),
            ]);
        }
        if let Some(s) = &p.seccomp {
            if s != "disabled" {
                t.row(vec!["seccomp".into(), s.clone()]);
            }
        }
        if let Some(cg) = p.cgroup_set {
            t.row(vec!["cgroups".into(), format!("set {cg}")]);
        }
        match &p.env {
            Some(env) => {
                for (i, e) in env.iter().enumerate() {
                    t.row(vec![
                        if i == 0 { "env".into() } else { String::new() },
                        e.clone(),
                    ]);
                }
            }
            None if p.state != "zombie" => {
                t.row(vec!["env".into(), "? (not in the saved memory)".into()])
            }
            None => {}
        }
        let mut body = String::new();
        t.render(&mut body, "    ");
        o.push_str(body.split_once('\n').map(|x| x.1).unwrap_or(""));
    }
    o.push('\n');
}

fn fds(ps: &[Process], st: Style, o: &mut String) {
    let _ = writeln!(o, "{}", st.head("FILES"));
    let mut t = Table::new(&[
        ("PID", true),
        ("FD", true),
        ("KIND", false),
        ("FLAGS", false),
        ("POS", true),
        ("PATH / PEER", false),
    ]);
    for p in ps {
        for f in p.fds.iter().flatten() {
            let mut flags: Vec<&str> = f
                .flags
                .iter()
                .map(|s| s.trim_start_matches("O_"))
                .filter(|s| *s != "LARGEFILE")
                .collect();
            if f.cloexec {
                flags.push("CLOEXEC");
            }
            t.row(vec![
                p.pid.to_string(),
                f.fd.to_string(),
                f.kind.clone(),
                if flags.is_empty() {
                    "-".into()
                } else {
                    flags.join("|").to_lowercase()
                },
                opt(&f.pos),
                f.target.clone(),
            ]);
        }
    }
    t.render(o, "  ");
    o.push('\n');
}

fn pipes(ps: &[Pipe], st: Style, o: &mut String) {
    let _ = writeln!(o, "{}", st.head("PIPES"));
    let mut t = Table::new(&[
        ("INODE", true),
        ("KIND", false),
        ("QUEUED", true),
        ("READERS", false),
        ("WRITERS", false),
        ("PATH", false),
    ]);
    for p in ps {
        t.row(vec![
            p.pipe_id.to_string(),
            p.kind.into(),
            p.queued_bytes.to_string(),
            holders(&p.readers),
            holders(&p.writers),
            opt(&p.path),
        ]);
    }
    t.render(o, "  ");
    o.push('\n');
}

fn ttys(ts: &[Tty], st: Style, o: &mut String) {
    let _ = writeln!(o, "{}", st.head("TTYS"));
    let mut t = Table::new(&[
        ("ID", true),
        ("TYPE", false),
        ("SIDE", false),
        ("INDEX", true),
        ("SID", true),
        ("FG PGRP", true),
        ("SIZE", false),
        ("QUEUED", true),
        ("HELD AS", false),
    ]);
    for x in ts {
        t.row(vec![
            x.id.to_string(),
            x.kind.clone(),
            x.side.clone(),
            opt(&x.index),
            x.sid.to_string(),
            x.pgrp.to_string(),
            match (x.rows, x.cols) {
                (Some(r), Some(c)) => format!("{c}x{r}"),
                _ => "-".into(),
            },
            x.queued_bytes.to_string(),
            x.holders
                .iter()
                .map(|(h, p)| format!("{}:{} {p}", h.pid, h.fd))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    t.render(o, "  ");
    o.push('\n');
}

fn sockets(ss: &[Socket], st: Style, o: &mut String) {
    let _ = writeln!(o, "{}", st.head("SOCKETS"));
    if ss.is_empty() {
        o.push_str("  none\n\n");
        return;
    }
    let mut t = Table::new(&[
        ("INODE", true),
        ("FAMILY", false),
        ("TYPE", false),
        ("STATE", false),
        ("LOCAL", false),
        ("PEER", false),
        ("QUEUED", true),
        ("HELD BY", false),
    ]);
    for s in ss {
        let mut state = s.state.clone();
        if let Some(b) = s.backlog {
            state.push_str(&format!(" ({b})"));
        }
        if let Some(sh) = &s.shutdown {
            state.push_str(&format!(" shut {sh}"));
        }
        t.row(vec![
            opt(&s.ino),
            s.family.clone(),
            s.kind.clone(),
            state,
            opt(&s.local),
            match (&s.peer, s.peer_ino) {
                (Some(p), Some(i)) if !p.starts_with("ino ") => format!("{p} (ino {i})"),
                (Some(p), _) => p.clone(),
                (None, _) => "-".into(),
            },
            match (s.queued_packets, s.send_queue_bytes) {
                (_, Some(out)) if out > 0 => format!("{} B, {out} B to send", s.queued_bytes),
                (0, _) => format!("{}", s.queued_bytes),
                (n, _) => format!("{} B/{n}", s.queued_bytes),
            },
            holders(&s.holders),
        ]);
    }
    t.render(o, "  ");
    o.push('\n');
}

fn mounts(ms: &[Mount], st: Style, o: &mut String) {
    let _ = writeln!(o, "{}", st.head("MOUNTS"));
    let mut t = Table::new(&[
        ("NS", true),
        ("ID", true),
        ("PARENT", true),
        ("MOUNTPOINT", false),
        ("TYPE", false),
        ("SOURCE", false),
        ("OPTIONS", false),
        ("ROOT", false),
    ]);
    for m in ms {
        let mut opts = m.options.clone();
        if let Some(k) = &m.external {
            opts = if opts.is_empty() {
                format!("external:{k}")
            } else {
                format!("external:{k} {opts}")
            };
        }
        t.row(vec![
            m.ns.to_string(),
            m.mnt_id.to_string(),
            m.parent_id.to_string(),
            m.mountpoint.clone(),
            m.fstype.clone(),
            m.source.clone(),
            opts,
            m.root.clone(),
        ]);
    }
    t.render(o, "  ");
    o.push('\n');
}

fn namespaces(ns: &[Namespace], st: Style, o: &mut String) {
    let _ = writeln!(o, "{}", st.head("NAMESPACES"));
    let mut t = Table::new(&[
        ("KIND", false),
        ("ID", true),
        ("SAVED", false),
        ("PIDS", false),
        ("DETAILS", false),
    ]);
    for n in ns {
        let details: Vec<String> = n
            .details
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k} {s}"),
                serde_json::Value::Array(a) => format!(
                    "{k} {}",
                    a.iter()
                        .map(|d| d["name"].as_str().unwrap_or("?").to_string()
                            + if d["up"] == true { " (up)" } else { "" })
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                other => format!("{k} {other}"),
            })
            .collect();
        t.row(vec![
            n.kind.clone(),
            n.id.to_string(),
            if n.saved { "yes" } else { "no (host's)" }.into(),
            n.pids
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(","),
            details.join("; "),
        ]);
    }
    t.render(o, "  ");
    o.push('\n');
}

fn cgroups(c: &Cgroups, st: Style, o: &mut String) {
    let _ = writeln!(o, "{}", st.head("CGROUPS"));
    let mut t = Table::new(&[
        ("SET", true),
        ("PIDS", false),
        ("CONTROLLER", false),
        ("PATH", false),
    ]);
    for s in &c.sets {
        for (i, (ctl, path)) in s.paths.iter().enumerate() {
            let first = i == 0;
            t.row(vec![
                if first {
                    s.id.to_string()
                } else {
                    String::new()
                },
                if first {
                    let mut p = s
                        .pids
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(",");
                    if s.dumper {
                        p = if p.is_empty() {
                            "(the dumper's)".into()
                        } else {
                            format!("{p} (the dumper's)")
                        };
                    }
                    if p.is_empty() {
                        "-".into()
                    } else {
                        p
                    }
                } else {
                    String::new()
                },
                if ctl.is_empty() {
                    "(v2)".into()
                } else {
                    ctl.clone()
                },
                path.clone(),
            ]);
        }
    }
    t.render(o, "  ");
    if !c.dirs.is_empty() {
        let mut d = Table::new(&[
            ("CONTROLLERS", false),
            ("DIRECTORY", false),
            ("SAVED", false),
        ]);
        for x in &c.dirs {
            d.row(vec![
                x.controllers.clone(),
                x.path.clone(),
                x.properties
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.trim()))
                    .collect::<Vec<_>>()
                    .join(" "),
            ]);
        }
        o.push('\n');
        d.render(o, "  ");
    }
    o.push('\n');
}

fn memory(ps: &[Process], st: Style, o: &mut String) {
    let _ = writeln!(o, "{}", st.head("MEMORY"));
    for p in ps {
        let Some(m) = &p.memory else { continue };
        let mut extra = String::new();
        if m.pages_in_parent > 0 {
            extra.push_str(&format!(", {} pages in the parent", m.pages_in_parent));
        }
        if m.pages_lazy > 0 {
            extra.push_str(&format!(", {} lazy", m.pages_lazy));
        }
        let _ = writeln!(
            o,
            "  {} {}: {} VMAs, {} mapped, {} pages saved ({}){extra}",
            st.head(&p.pid.to_string()),
            p.comm,
            m.vmas.len(),
            size(m.vm_bytes),
            m.pages_saved,
            size(m.bytes_saved)
        );
        let mut t = Table::new(&[
            ("START", false),
            ("END", false),
            ("SIZE", true),
            ("PROT", false),
            ("KIND", false),
            ("SAVED", true),
            ("OFFSET", true),
            ("PATH", false),
        ]);
        for v in &m.vmas {
            let mut saved = v.pages_saved.to_string();
            if v.pages_in_parent > 0 {
                saved.push_str(&format!("+{}p", v.pages_in_parent));
            }
            t.row(vec![
                v.start.clone(),
                v.end.clone(),
                size(v.size),
                v.prot.clone(),
                v.kind.clone(),
                saved,
                if v.offset > 0 {
                    format!("{:#x}", v.offset)
                } else {
                    "-".into()
                },
                opt(&v.path),
            ]);
        }
        t.render(o, "    ");
    }
    o.push('\n');
}

fn container(c: &ContainerInfo, st: Style, o: &mut String) {
    let _ = writeln!(o, "{}", st.head("CONTAINER"));
    let mut t = Table::new(&[("", false), ("", false)]);
    t.row(vec!["runtime".into(), c.runtime.clone()]);
    t.row(vec!["name".into(), opt(&c.name)]);
    t.row(vec!["id".into(), opt(&c.id)]);
    t.row(vec![
        "image".into(),
        match (&c.image, &c.image_id) {
            (Some(i), Some(id)) => format!("{i} ({})", id.chars().take(12).collect::<String>()),
            (i, _) => opt(i),
        },
    ]);
    if let Some(x) = &c.created {
        t.row(vec!["created".into(), x.clone()]);
    }
    if let Some(x) = &c.checkpoint_name {
        t.row(vec!["checkpoint".into(), x.clone()]);
    }
    if let Some(x) = &c.runtime_type {
        t.row(vec!["runtime type".into(), x.clone()]);
    }
    if let Some(x) = &c.snapshotter {
        t.row(vec!["snapshotter".into(), x.clone()]);
    }
    if let Some(s) = &c.spec {
        t.row(vec![
            "command".into(),
            s.args
                .iter()
                .map(|a| quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        ]);
        t.row(vec!["cwd".into(), opt(&s.cwd)]);
        t.row(vec![
            "user".into(),
            format!("uid {} gid {}", opt(&s.uid), opt(&s.gid)),
        ]);
        t.row(vec!["hostname".into(), opt(&s.hostname)]);
        t.row(vec![
            "root".into(),
            format!(
                "{}{}",
                opt(&s.root),
                if s.root_readonly { " (read-only)" } else { "" }
            ),
        ]);
        t.row(vec!["oci version".into(), s.oci_version.clone()]);
        for (i, e) in s.env.iter().enumerate() {
            t.row(vec![
                if i == 0 { "env".into() } else { String::new() },
                e.clone(),
            ]);
        }
        t.row(vec![
            "namespaces".into(),
            s.namespaces
                .iter()
                .map(|(k, p)| {
                    if p.is_empty() {
                        k.clone()
                    } else {
                        format!("{k}={p}")
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
        ]);
        if let Some(cg) = &s.cgroups_path {
            t.row(vec!["cgroups path".into(), cg.clone()]);
        }
        t.row(vec![
            "capabilities".into(),
            if s.capabilities.is_empty() {
                "none".into()
            } else {
                s.capabilities.join(" ")
            },
        ]);
        if let Some((a, n)) = &s.seccomp {
            t.row(vec![
                "seccomp".into(),
                format!("default {a}, {n} syscall rules"),
            ]);
        }
        if s.no_new_privileges {
            t.row(vec!["no_new_privs".into(), "yes".into()]);
        }
    }
    if let Some(d) = &c.rootfs_diff {
        t.row(vec!["rootfs diff".into(), tar_line(d)]);
    }
    if !c.deleted_files.is_empty() {
        t.row(vec!["deleted".into(), c.deleted_files.join(", ")]);
    }
    if let Some(d) = &c.dev_shm {
        t.row(vec!["/dev/shm".into(), tar_line(d)]);
    }
    if let Some(n) = &c.network {
        t.row(vec!["network".into(), network_line(n)]);
    }
    let mut body = String::new();
    t.render(&mut body, "  ");
    o.push_str(body.split_once('\n').map(|x| x.1).unwrap_or(""));
    if let Some(s) = &c.spec {
        if !s.mounts.is_empty() {
            o.push('\n');
            let mut m = Table::new(&[
                ("DESTINATION", false),
                ("TYPE", false),
                ("SOURCE", false),
                ("OPTIONS", false),
            ]);
            for (d, ty, src, opts) in &s.mounts {
                m.row(vec![d.clone(), ty.clone(), src.clone(), opts.clone()]);
            }
            m.render(o, "  ");
        }
    }
    if let Some(d) = &c.rootfs_diff {
        if !d.names.is_empty() {
            o.push('\n');
            let mut m = Table::new(&[("CHANGED IN THE ROOTFS", false), ("SIZE", true)]);
            for (n, sz, k) in &d.names {
                if *k == 'd' {
                    continue;
                }
                m.row(vec![format!("/{n}"), sz.to_string()]);
            }
            m.render(o, "  ");
            if d.truncated {
                let _ = writeln!(o, "  ... ({} entries in all)", d.entries);
            }
        }
    }
    o.push('\n');
}

/// podman's network.status in a line: each network's interfaces and addresses.
fn network_line(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "none (no network saved)".into(),
        serde_json::Value::Object(nets) => {
            let mut parts = Vec::new();
            for (net, st) in nets {
                let mut addrs = Vec::new();
                if let Some(ifs) = st["interfaces"].as_object() {
                    for (ifname, i) in ifs {
                        for s in i["subnets"].as_array().into_iter().flatten() {
                            if let Some(ip) = s["ipnet"].as_str() {
                                addrs.push(format!("{ifname} {ip}"));
                            }
                        }
                    }
                }
                parts.push(format!("{net}: {}", addrs.join(", ")));
            }
            if parts.is_empty() {
                "none".into()
            } else {
                parts.join("; ")
            }
        }
        other => other.to_string(),
    }
}

fn search(s: &Search, st: Style, o: &mut String) {
    let _ = writeln!(
        o,
        "{}  {} {:?}: {} hits in {} of saved memory{}",
        st.head("SEARCH"),
        if s.regex { "regex" } else { "string" },
        s.pattern,
        s.hits.len(),
        size(s.bytes_searched),
        if s.truncated {
            " (stopped at --max-hits)"
        } else {
            ""
        }
    );
    if s.hits.is_empty() {
        o.push('\n');
        return;
    }
    let mut t = Table::new(&[
        ("PID", true),
        ("COMM", false),
        ("ADDRESS", false),
        ("MAPPING", false),
        ("CONTEXT", false),
    ]);
    for h in &s.hits {
        t.row(vec![
            h.pid.to_string(),
            h.comm.clone(),
            h.address.clone(),
            format!("{}+{:#x}", h.mapping, h.offset),
            h.context.clone(),
        ]);
    }
    t.render(o, "  ");
    o.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let mut t = Table::new(&[("PID", false), ("N", true), ("WHAT", false)]);
        t.row(vec!["1".into(), "10".into(), "a".into()]);
        t.row(vec!["└─ 23".into(), "5".into(), "bb".into()]);
        let mut s = String::new();
        t.render(&mut s, "");
        assert_eq!(s, "PID     N  WHAT\n1      10  a\n└─ 23   5  bb\n");
    }

    #[test]
    fn sizes_and_quotes() {
        assert_eq!(size(10), "10 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("/bin/sh"), "/bin/sh");
    }
}
