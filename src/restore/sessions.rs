//! Sessions the restore recreates through the order of forks and short-lived helper tasks
//! (CRIU's `prepare_pstree_ids`). A process stays in the session it was forked in until it
//! calls setsid(), which makes it the leader of a new one. So for a process in session S
//! that does not lead it, each ancestor between it and S was forked in S and called setsid()
//! only after forking the next one down: such a leader is "born" in S ([`Plan::born`]), and
//! its parent forks it before its own setsid(). When the chain reaches the tree's root
//! without meeting S, its topmost process was orphaned and reparented to the root, which must
//! then be the init of the tree's PID namespace (an orphan's new parent); the restore forks
//! that process from a task in session S that goes away at once ([`Via`]), so that it is
//! reparented to the root again, as CRIU does with its helper tasks.
//!
//! Used by the dump (to refuse what cannot be recreated, on the live tree) and by the
//! restore (on the images), so both decide alike.

use std::collections::HashMap;

/// One process as the plan sees it (PIDs as the tree's namespace numbers them).
#[derive(Debug, Clone, Copy)]
pub struct Task {
    pub pid: u32,
    pub ppid: u32,
    pub sid: u32,
    pub zombie: bool,
}

/// How a child of the root that was orphaned out of another session is forked again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Session S's leader is gone: a helper with PID S, forked by the root, calls setsid()
    /// (the session, and a process group S, live on in the restored processes) and forks it.
    NewLeader(u32),
    /// Session S's leader (PID S) is alive in the tree: after its setsid() it forks a helper
    /// with a free PID, which forks it.
    LeaderHelper(u32),
    /// Session S's leader (PID S) is a zombie of the tree: it forks it after its setsid(),
    /// before it dies.
    ZombieLeader(u32),
}

impl Via {
    /// The session the child ends up in.
    pub fn sid(self) -> u32 {
        match self {
            Via::NewLeader(s) | Via::LeaderHelper(s) | Via::ZombieLeader(s) => s,
        }
    }
}

/// The fork order and helpers a tree needs for its sessions.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    /// Session leaders that forked a child before their setsid(): the session they were
    /// forked in (their parent forks them before its own setsid()).
    pub born: HashMap<u32, u32>,
    /// Children of the root forked through [`Via`] instead of by the root.
    pub via: HashMap<u32, Via>,
}

impl Plan {
    /// The session `t` must be forked in: its own when it does not lead one, else the one it
    /// was born in, else (it forked nothing before its setsid) its parent's final session.
    pub fn born_in(&self, pid: u32, sid: u32, parent_sid: u32) -> u32 {
        if sid != pid {
            sid
        } else {
            self.born.get(&pid).copied().unwrap_or(parent_sid)
        }
    }

    /// The children of the root that `host` (a leader, alive or zombie) forks (sorted).
    pub fn hosted_by(&self, host: u32) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .via
            .iter()
            .filter(|(_, v)| matches!(v, Via::LeaderHelper(l) | Via::ZombieLeader(l) if *l == host))
            .map(|(&c, _)| c)
            .collect();
        v.sort_unstable();
        v
    }

    /// The sessions whose gone leader a helper replaces, each with the children it forks.
    pub fn new_leaders(&self) -> Vec<(u32, Vec<u32>)> {
        let mut out: Vec<(u32, Vec<u32>)> = Vec::new();
        let mut kids: Vec<(u32, u32)> = self
            .via
            .iter()
            .filter_map(|(&c, v)| match v {
                Via::NewLeader(s) => Some((*s, c)),
                _ => None,
            })
            .collect();
        kids.sort_unstable();
        for (s, c) in kids {
            match out.last_mut() {
                Some((last, v)) if *last == s => v.push(c),
                _ => out.push((s, vec![c])),
            }
        }
        out
    }
}

/// Plans the sessions of `tasks` (the root first). `root_is_init`: the root is the init of
/// the tree's own PID namespace. The error names the process and why its session cannot be
/// made again.
pub fn plan(tasks: &[Task], root_is_init: bool) -> Result<Plan, String> {
    let Some(root) = tasks.first() else {
        return Ok(Plan::default());
    };
    let by_pid: HashMap<u32, &Task> = tasks.iter().map(|t| (t.pid, t)).collect();
    let mut p = Plan::default();
    for x in &tasks[1..] {
        let s = x.sid;
        if s == x.pid {
            continue;
        }
        let mut y = x;
        let mut a = *by_pid.get(&x.ppid).ok_or_else(|| {
            format!(
                "process {}: its parent {} is not in the tree",
                x.pid, x.ppid
            )
        })?;
        loop {
            if a.sid == s {
                break; // forked in S by a process of S (its leader or a member)
            }
            if a.pid == root.pid {
                if !root_is_init {
                    return Err(format!(
                        "process {}: session {s} has no leader among its ancestors, and the tree's root is not the init of its own PID namespace (to which an orphan would return)",
                        y.pid
                    ));
                }
                let via = match by_pid.get(&s) {
                    None => Via::NewLeader(s),
                    Some(l) if l.sid != s => {
                        return Err(format!(
                            "process {}: session {s}: process {s} of the tree is in session {} (the PID was reused)",
                            x.pid, l.sid
                        ))
                    }
                    Some(l) if l.zombie => Via::ZombieLeader(s),
                    Some(_) => Via::LeaderHelper(s),
                };
                if let Some(old) = p.via.insert(y.pid, via) {
                    if old != via {
                        return Err(format!(
                            "process {}: cannot tell which session ({} or {s}) it was forked in",
                            y.pid,
                            old.sid()
                        ));
                    }
                }
                break;
            }
            if a.sid != a.pid {
                return Err(format!(
                    "process {}: session {s}: its ancestor {} is in session {} without leading it",
                    x.pid, a.pid, a.sid
                ));
            }
            // A leader that forked the next one down while still in S.
            if let Some(old) = p.born.insert(a.pid, s) {
                if old != s {
                    return Err(format!(
                        "process {}: cannot tell which session ({old} or {s}) it was forked in",
                        a.pid
                    ));
                }
            }
            y = a;
            a = *by_pid.get(&a.ppid).ok_or_else(|| {
                format!(
                    "process {}: its parent {} is not in the tree",
                    a.pid, a.ppid
                )
            })?;
        }
    }
    // A leader born in S is forked by its parent while the parent is still in S: the parent
    // must have been in S then (its own session, or the one it was born in).
    for (&l, &s) in &p.born {
        if p.via.contains_key(&l) {
            continue; // forked in S by its helper
        }
        let par = by_pid[&by_pid[&l].ppid];
        if par.sid != s && p.born_in(par.pid, par.sid, 0) != s {
            return Err(format!(
                "process {l}: it was forked in session {s}, which its parent {} was never in",
                par.pid
            ));
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(pid: u32, ppid: u32, sid: u32) -> Task {
        Task {
            pid,
            ppid,
            sid,
            zombie: false,
        }
    }

    /// zdtm's session00 tree (root 1 leads session 1).
    #[test]
    fn session00_shapes() {
        let tasks = [
            t(1, 0, 1),
            t(4, 1, 4), // NEWSID
            t(5, 1, 1), // same session
            t(8, 1, 8), // CHANGESID: forked 9 before its setsid
            t(9, 8, 1),
            t(10, 1, 10), // DOUBLE_CHANGESID
            t(11, 10, 11),
            t(12, 11, 1),
            t(3, 1, 1), // DETACH: orphan in the root's session
            t(7, 1, 6), // DETACH|NEWSID: orphan whose leader 6 is gone
        ];
        let p = plan(&tasks, true).unwrap();
        assert_eq!(p.born.get(&8), Some(&1));
        assert_eq!(p.born.get(&10), Some(&1));
        assert_eq!(p.born.get(&11), Some(&1));
        assert_eq!(p.via.get(&7), Some(&Via::NewLeader(6)));
        assert_eq!(p.new_leaders(), vec![(6, vec![7])]);
        assert!(plan(&tasks, false).is_err());
    }

    /// An orphan in the session of a live leader (child_subreaper_and_reparent) and of a
    /// zombie leader (zombie_leader).
    #[test]
    fn orphans_of_live_and_zombie_leaders() {
        let tasks = [t(1, 0, 1), t(2, 1, 2), t(3, 1, 2)];
        let p = plan(&tasks, true).unwrap();
        assert_eq!(p.via.get(&3), Some(&Via::LeaderHelper(2)));
        assert_eq!(p.hosted_by(2), vec![3]);
        let mut z = tasks;
        z[1].zombie = true;
        assert_eq!(
            plan(&z, true).unwrap().via.get(&3),
            Some(&Via::ZombieLeader(2))
        );
    }

    /// A child in a session that is neither its parent's nor one its parent was in.
    #[test]
    fn impossible_sessions_are_refused() {
        // 3's parent 2 leads 2 and was born in 5, which its parent 4 (in session 1) never was.
        let tasks = [t(1, 0, 1), t(4, 1, 1), t(2, 4, 2), t(3, 2, 5), t(5, 1, 5)];
        assert!(plan(&tasks, true).is_err());
        // The same with 2 an orphan of the root: forked through 5's helper.
        let tasks = [t(1, 0, 1), t(2, 1, 2), t(3, 2, 5), t(5, 1, 5)];
        let p = plan(&tasks, true).unwrap();
        assert_eq!(
            (p.born.get(&2), p.via.get(&2)),
            (Some(&5), Some(&Via::LeaderHelper(5)))
        );
        let tasks = [t(1, 0, 1), t(2, 1, 1), t(3, 2, 7)];
        assert!(plan(&tasks, true).is_err()); // 2 is in session 1 without leading it
    }
}
