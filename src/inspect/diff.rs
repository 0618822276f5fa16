//! `cryo diff A B`: two checkpoints of the same tree compared — processes added or gone (by
//! PID), what changed about the others, fds added, gone or changed, and per VMA how many of
//! the saved pages changed, appeared or disappeared (by content: xxh3-128 of each page,
//! parent chains followed, so a pre-dump and the dump after it compare as the memory was).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde::Serialize;

use super::mem;
use super::model::{hex, Fd, Note};
use super::render::Style;
use super::{InspectError, Loaded, Options, Sections};

pub const FORMAT: &str = "cryo-diff/1";

#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub format: &'static str,
    pub a: String,
    pub b: String,
    pub processes: ProcDiff,
    pub fds: Vec<FdDiff>,
    pub memory: Vec<MemDiff>,
    pub notes: Vec<Note>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ProcDiff {
    pub added: Vec<Brief>,
    pub gone: Vec<Brief>,
    /// Processes in both whose state, name, parent, threads or command line changed.
    pub changed: Vec<Changed>,
    pub same: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Brief {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub command: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Changed {
    pub pid: u32,
    /// "threads 2 -> 3", ...
    pub what: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FdDiff {
    pub pid: u32,
    pub added: Vec<Fd>,
    pub gone: Vec<Fd>,
    /// (before, after)
    pub changed: Vec<(Fd, Fd)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemDiff {
    pub pid: u32,
    pub comm: String,
    pub vmas: Vec<VmaDiff>,
    pub pages_changed: u64,
    pub pages_added: u64,
    pub pages_gone: u64,
    pub pages_same: u64,
}

/// One VMA (of A, of B, or of both when they start at the same address).
#[derive(Debug, Clone, Serialize)]
pub struct VmaDiff {
    pub start: String,
    pub end: String,
    pub kind: String,
    pub path: Option<String>,
    /// both, added (only in B), gone (only in A), resized.
    pub status: String,
    /// Saved pages whose content differs.
    pub pages_changed: u64,
    /// Saved in B only.
    pub pages_added: u64,
    /// Saved in A only.
    pub pages_gone: u64,
    pub pages_same: u64,
}

/// Compares checkpoint `a` with `b`.
pub fn diff(a: &mut Loaded, b: &mut Loaded) -> Result<Diff, InspectError> {
    let o = Options {
        sections: Sections {
            container: false,
            ..Sections::ALL
        },
        pid: None,
        search: None,
        summary: false,
    };
    let ra = a.report(&o)?;
    let rb = b.report(&o)?;
    let pa = ra.processes.unwrap_or_default();
    let pb = rb.processes.unwrap_or_default();
    let ia: BTreeMap<u32, _> = pa.iter().map(|p| (p.pid, p)).collect();
    let ib: BTreeMap<u32, _> = pb.iter().map(|p| (p.pid, p)).collect();
    let brief = |p: &super::model::Process| Brief {
        pid: p.pid,
        ppid: p.ppid,
        comm: p.comm.clone(),
        command: p.argv.clone(),
    };
    let mut procs = ProcDiff::default();
    let mut fds = Vec::new();
    let mut memory = Vec::new();
    for (pid, p) in &ib {
        if !ia.contains_key(pid) {
            procs.added.push(brief(p));
        }
    }
    for (pid, p) in &ia {
        let Some(q) = ib.get(pid) else {
            procs.gone.push(brief(p));
            continue;
        };
        let mut what = Vec::new();
        let mut cmp = |name: &str, x: String, y: String| {
            if x != y {
                what.push(format!("{name} {x} -> {y}"));
            }
        };
        cmp("comm", p.comm.clone(), q.comm.clone());
        cmp("state", p.state.clone(), q.state.clone());
        cmp("ppid", p.ppid.to_string(), q.ppid.to_string());
        cmp("pgid", p.pgid.to_string(), q.pgid.to_string());
        cmp("sid", p.sid.to_string(), q.sid.to_string());
        cmp(
            "threads",
            p.threads.len().to_string(),
            q.threads.len().to_string(),
        );
        cmp("exe", format!("{:?}", p.exe), format!("{:?}", q.exe));
        cmp("cwd", format!("{:?}", p.cwd), format!("{:?}", q.cwd));
        if p.argv.is_some() && q.argv.is_some() && p.argv != q.argv {
            what.push(format!(
                "command {} -> {}",
                p.argv.as_ref().map(|a| a.join(" ")).unwrap_or_default(),
                q.argv.as_ref().map(|a| a.join(" ")).unwrap_or_default()
            ));
        }
        if p.env.is_some() && q.env.is_some() && p.env != q.env {
            what.push("environment changed".into());
        }
        if p.creds != q.creds {
            what.push("credentials changed".into());
        }
        if what.is_empty() {
            procs.same += 1;
        } else {
            procs.changed.push(Changed { pid: *pid, what });
        }
        // fds
        let fa: BTreeMap<u32, &Fd> = p.fds.iter().flatten().map(|f| (f.fd, f)).collect();
        let fb: BTreeMap<u32, &Fd> = q.fds.iter().flatten().map(|f| (f.fd, f)).collect();
        let mut d = FdDiff {
            pid: *pid,
            added: Vec::new(),
            gone: Vec::new(),
            changed: Vec::new(),
        };
        for (n, f) in &fb {
            match fa.get(n) {
                None => d.added.push((*f).clone()),
                Some(e) if !same_fd(e, f) => d.changed.push(((*e).clone(), (*f).clone())),
                Some(_) => {}
            }
        }
        for (n, f) in &fa {
            if !fb.contains_key(n) {
                d.gone.push((*f).clone());
            }
        }
        if !(d.added.is_empty() && d.gone.is_empty() && d.changed.is_empty()) {
            fds.push(d);
        }
        memory.push(mem_diff(a, b, *pid)?);
    }
    let mut notes: Vec<Note> = Vec::new();
    for (side, r) in [("A", &ra.notes), ("B", &rb.notes)] {
        for n in r {
            notes.push(Note {
                object: format!("{side}: {}", n.object),
                reason: n.reason.clone(),
            });
        }
    }
    Ok(Diff {
        format: FORMAT,
        a: ra.source.path,
        b: rb.source.path,
        processes: procs,
        fds,
        memory,
        notes,
    })
}

/// Same fd, ignoring the file id (ids are per checkpoint).
fn same_fd(a: &Fd, b: &Fd) -> bool {
    a.kind == b.kind
        && a.target == b.target
        && a.flags == b.flags
        && a.pos == b.pos
        && a.cloexec == b.cloexec
}

fn mem_diff(a: &Loaded, b: &Loaded, pid: u32) -> Result<MemDiff, InspectError> {
    let ta = a.tasks.iter().find(|t| t.pid() == pid).expect("pid in A");
    let tb = b.tasks.iter().find(|t| t.pid() == pid).expect("pid in B");
    let ha = match &ta.pagemap {
        Some(m) => mem::page_hashes(&a.src, m)?,
        None => BTreeMap::new(),
    };
    let hb = match &tb.pagemap {
        Some(m) => mem::page_hashes(&b.src, m)?,
        None => BTreeMap::new(),
    };
    let la = a.vma_labels(ta);
    let lb = b.vma_labels(tb);
    let va: BTreeMap<u64, u64> = ta
        .mm
        .iter()
        .flat_map(|m| &m.vmas)
        .map(|v| (v.start, v.end))
        .collect();
    let vb: BTreeMap<u64, u64> = tb
        .mm
        .iter()
        .flat_map(|m| &m.vmas)
        .map(|v| (v.start, v.end))
        .collect();
    let kinds = |t: &super::collect::Task, s: u64| {
        t.mm.iter()
            .flat_map(|m| &m.vmas)
            .find(|v| v.start == s)
            .map(|v| {
                let stack = t.mm.as_ref().map(|m| m.mm_start_stack).unwrap_or(0);
                mem::vma_kind_at(v, stack).to_string()
            })
            .unwrap_or_default()
    };
    let starts: BTreeSet<u64> = va.keys().chain(vb.keys()).copied().collect();
    let mut out = MemDiff {
        pid,
        comm: tb.comm(),
        vmas: Vec::new(),
        pages_changed: 0,
        pages_added: 0,
        pages_gone: 0,
        pages_same: 0,
    };
    for s in starts {
        let (ea, eb) = (va.get(&s), vb.get(&s));
        let end = *eb.or(ea).expect("one side has it");
        let hi = (*ea.unwrap_or(&end)).max(end);
        let status = match (ea, eb) {
            (Some(x), Some(y)) if x == y => "both",
            (Some(_), Some(_)) => "resized",
            (None, Some(_)) => "added",
            _ => "gone",
        };
        let (mut ch, mut add, mut gone, mut same) = (0, 0, 0, 0);
        let keys: BTreeSet<u64> = ha
            .range(s..hi)
            .map(|(k, _)| *k)
            .chain(hb.range(s..hi).map(|(k, _)| *k))
            .collect();
        for k in keys {
            match (ha.get(&k), hb.get(&k)) {
                (Some(x), Some(y)) if x == y => same += 1,
                (Some(_), Some(_)) => ch += 1,
                (None, Some(_)) => add += 1,
                (Some(_), None) => gone += 1,
                (None, None) => {}
            }
        }
        let label = lb
            .iter()
            .chain(&la)
            .find(|(x, _, _)| *x == s)
            .map(|(_, _, l)| l.clone());
        out.pages_changed += ch;
        out.pages_added += add;
        out.pages_gone += gone;
        out.pages_same += same;
        out.vmas.push(VmaDiff {
            start: hex(s),
            end: hex(end),
            kind: if eb.is_some() {
                kinds(tb, s)
            } else {
                kinds(ta, s)
            },
            path: label
                .filter(|l| !l.starts_with('['))
                .map(|l| l.split_once(' ').map(|x| x.1.to_string()).unwrap_or(l)),
            status: status.into(),
            pages_changed: ch,
            pages_added: add,
            pages_gone: gone,
            pages_same: same,
        });
    }
    Ok(out)
}

fn fd_line(f: &Fd) -> String {
    let pos = f.pos.map(|p| format!(" pos {p}")).unwrap_or_default();
    format!("fd {} {} {}{pos}", f.fd, f.kind, f.target)
}

/// The text view.
pub fn render(d: &Diff, st: Style) -> String {
    let head = |s: &str| {
        if st.color {
            format!("\x1b[1m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    let mut o = String::new();
    let _ = writeln!(o, "{}  {} -> {}\n", head("DIFF"), d.a, d.b);
    let p = &d.processes;
    let _ = writeln!(
        o,
        "{}  {} added, {} gone, {} changed, {} unchanged",
        head("PROCESSES"),
        p.added.len(),
        p.gone.len(),
        p.changed.len(),
        p.same
    );
    let cmd = |b: &Brief| {
        b.command
            .as_ref()
            .map(|c| c.join(" "))
            .unwrap_or_else(|| format!("[{}]", b.comm))
    };
    for b in &p.added {
        let _ = writeln!(o, "  + {} (parent {}) {}", b.pid, b.ppid, cmd(b));
    }
    for b in &p.gone {
        let _ = writeln!(o, "  - {} (parent {}) {}", b.pid, b.ppid, cmd(b));
    }
    for c in &p.changed {
        let _ = writeln!(o, "  ~ {}: {}", c.pid, c.what.join("; "));
    }
    o.push('\n');
    let _ = writeln!(o, "{}", head("FILES"));
    if d.fds.is_empty() {
        o.push_str("  no fd changed\n");
    }
    for f in &d.fds {
        let _ = writeln!(o, "  {}", f.pid);
        for x in &f.added {
            let _ = writeln!(o, "    + {}", fd_line(x));
        }
        for x in &f.gone {
            let _ = writeln!(o, "    - {}", fd_line(x));
        }
        for (x, y) in &f.changed {
            let _ = writeln!(o, "    ~ {}\n      -> {}", fd_line(x), fd_line(y));
        }
    }
    o.push('\n');
    let _ = writeln!(o, "{}  (saved pages, compared by content)", head("MEMORY"));
    for m in &d.memory {
        let _ = writeln!(
            o,
            "  {} {}: {} changed, {} new, {} gone, {} same",
            m.pid, m.comm, m.pages_changed, m.pages_added, m.pages_gone, m.pages_same
        );
        let rows: Vec<&VmaDiff> = m
            .vmas
            .iter()
            .filter(|v| v.status != "both" || v.pages_changed + v.pages_added + v.pages_gone > 0)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let w = rows.iter().map(|v| v.start.len()).max().unwrap_or(0);
        let _ = writeln!(
            o,
            "    {:<w$}  {:<w$}  {:<8} {:>7} {:>5} {:>5} {:>5}  PATH",
            "START", "END", "VMA", "CHANGED", "NEW", "GONE", "SAME"
        );
        for v in rows {
            let _ = writeln!(
                o,
                "    {:<w$}  {:<w$}  {:<8} {:>7} {:>5} {:>5} {:>5}  {}",
                v.start,
                v.end,
                v.status,
                v.pages_changed,
                v.pages_added,
                v.pages_gone,
                v.pages_same,
                v.path.clone().unwrap_or_else(|| format!("[{}]", v.kind)),
            );
        }
    }
    o.push('\n');
    if !d.notes.is_empty() {
        let _ = writeln!(o, "{}", head("NOT READ"));
        for n in &d.notes {
            let _ = writeln!(o, "  {}: {}", n.object, n.reason);
        }
        o.push('\n');
    }
    o
}
