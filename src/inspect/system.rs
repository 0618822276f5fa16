//! The system side of a report: the mount trees of the saved mount namespaces, every
//! namespace of the tree (saved or the host's) with its details, and the cgroup sets and
//! directories of `cgroup.img`.

use std::collections::BTreeMap;

use super::collect::{img, img_one, Loaded};
use super::model::*;
use super::Options;
use crate::image::{self, pb};

/// The namespace ids of a task, by kind.
pub fn ns_ids(ids: &pb::TaskKobjIdsEntry) -> Vec<(&'static str, u32)> {
    [
        ("mnt", ids.mnt_ns_id),
        ("net", ids.net_ns_id),
        ("pid", ids.pid_ns_id),
        ("ipc", ids.ipc_ns_id),
        ("uts", ids.uts_ns_id),
        ("time", ids.time_ns_id),
        ("user", ids.user_ns_id),
        ("cgroup", ids.cgroup_ns_id),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect()
}

impl Loaded {
    pub(super) fn ns_ids_of(&self, o: &Options) -> BTreeMap<(&'static str, u32), Vec<u32>> {
        let mut m: BTreeMap<(&'static str, u32), Vec<u32>> = BTreeMap::new();
        for t in &self.tasks {
            if o.pid.is_some_and(|p| p != t.pid()) {
                continue;
            }
            if let Some(ids) = &t.ids {
                for (k, v) in ns_ids(ids) {
                    m.entry((k, v)).or_default().push(t.pid());
                }
            }
        }
        m
    }

    /// Every mount of the saved mount namespaces, each tree in mount order (a parent
    /// before its children, siblings by id), whatever order the image has.
    pub(super) fn mounts(&mut self, o: &Options) -> Vec<Mount> {
        let all = self.mounts_unordered(o);
        let ids: std::collections::HashSet<(u32, u32)> =
            all.iter().map(|m| (m.ns, m.mnt_id)).collect();
        let mut kids: BTreeMap<(u32, u32), Vec<&Mount>> = BTreeMap::new();
        let mut roots = Vec::new();
        for m in &all {
            if ids.contains(&(m.ns, m.parent_id)) && m.parent_id != m.mnt_id {
                kids.entry((m.ns, m.parent_id)).or_default().push(m);
            } else {
                roots.push(m);
            }
        }
        roots.sort_by_key(|m| (m.ns, m.mnt_id));
        let mut out = Vec::with_capacity(all.len());
        let mut stack: Vec<&Mount> = roots.into_iter().rev().collect();
        while let Some(m) = stack.pop() {
            out.push(m.clone());
            if let Some(ch) = kids.get_mut(&(m.ns, m.mnt_id)) {
                ch.sort_by_key(|c| std::cmp::Reverse(c.mnt_id));
                stack.extend(ch.iter());
            }
        }
        out
    }

    fn mounts_unordered(&mut self, o: &Options) -> Vec<Mount> {
        let mut out = Vec::new();
        let ids: Vec<u32> = self
            .ns_ids_of(o)
            .keys()
            .filter(|(k, _)| *k == "mnt")
            .map(|(_, v)| *v)
            .collect();
        for id in ids {
            let name = format!("mountpoints-{id}.img");
            let Some(ms) = img::<pb::MntEntry>(&self.src, &name, image::MNTS, &mut self.notes)
            else {
                continue;
            };
            for m in ms {
                let fstype = m
                    .fsname
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| {
                        pb::Fstype::try_from(m.fstype as i32)
                            .map(|f| f.as_str_name().to_lowercase())
                            .unwrap_or_else(|_| format!("fstype({})", m.fstype))
                    });
                out.push(Mount {
                    ns: id,
                    mnt_id: m.mnt_id,
                    parent_id: m.parent_mnt_id,
                    mountpoint: m.mountpoint,
                    fstype,
                    source: m.source,
                    root: m.root,
                    options: m.options,
                    // CRIU sets only the key; older images only the flag.
                    external: match (m.ext_key.filter(|k| !k.is_empty()), m.ext_mount) {
                        (Some(k), _) => Some(k),
                        (None, Some(true)) => Some(String::new()),
                        _ => None,
                    },
                    shared: m.shared_id.filter(|v| *v != 0),
                    master: m.master_id.filter(|v| *v != 0),
                });
            }
        }
        out
    }

    pub(super) fn namespaces(&mut self, o: &Options) -> Vec<Namespace> {
        let mut out = Vec::new();
        for ((kind, id), pids) in self.ns_ids_of(o) {
            let mut details = BTreeMap::new();
            let n = &mut self.notes;
            let src = &self.src;
            let has = |name: String| src.image(&name).is_some();
            let saved = match kind {
                "uts" => {
                    if let Some(u) =
                        img_one::<pb::UtsnsEntry>(src, &format!("utsns-{id}.img"), image::UTSNS, n)
                    {
                        details.insert("hostname".into(), u.nodename.into());
                        details.insert("domainname".into(), u.domainname.into());
                        true
                    } else {
                        false
                    }
                }
                "net" => {
                    let mut saved = false;
                    if let Some(devs) = img::<pb::NetDeviceEntry>(
                        src,
                        &format!("netdev-{id}.img"),
                        image::NETDEV,
                        n,
                    ) {
                        let d: Vec<serde_json::Value> = devs
                            .iter()
                            .map(|d| {
                                serde_json::json!({
                                    "name": d.name, "mtu": d.mtu,
                                    "up": d.flags & libc::IFF_UP as u32 != 0,
                                    "type": pb::NdType::try_from(d.r#type).map(|t| t.as_str_name().to_lowercase()).unwrap_or_default(),
                                })
                            })
                            .collect();
                        details.insert("devices".into(), d.into());
                        saved = true;
                    }
                    if let Some(e) =
                        img_one::<pb::NetnsEntry>(src, &format!("netns-{id}.img"), image::NETNS, n)
                    {
                        if let Some(k) = e.ext_key {
                            details.insert("external".into(), k.into());
                        }
                        saved = true;
                    }
                    saved
                }
                "mnt" => {
                    let name = format!("mountpoints-{id}.img");
                    if let Some(ms) = img::<pb::MntEntry>(src, &name, image::MNTS, n) {
                        details.insert("mounts".into(), ms.len().into());
                        true
                    } else {
                        false
                    }
                }
                "ipc" => {
                    let mut saved = false;
                    for (what, kind) in [
                        ("shm", image::IPCNS_SHM),
                        ("sem", image::IPCNS_SEM),
                        ("msg", image::IPCNS_MSG),
                    ] {
                        let name = format!("ipcns-{what}-{id}.img");
                        if let Some(m) = src.image(&name) {
                            saved = true;
                            if let Ok(b) = src.bytes(m) {
                                if let Ok(e) = image::entries(&src.display_name(m), kind, &b) {
                                    details.insert(format!("{what}_objects"), e.len().into());
                                }
                            }
                        }
                    }
                    if has(format!("ipcns-mq-{id}.img")) {
                        details.insert("posix_mqueues".into(), true.into());
                    }
                    saved || has(format!("ipcns-var-{id}.img"))
                }
                "time" => {
                    if let Some(t) = img_one::<pb::TimensEntry>(
                        src,
                        &format!("timens-{id}.img"),
                        image::TIMENS,
                        n,
                    ) {
                        details.insert(
                            "monotonic".into(),
                            format!("{}.{:09}", t.monotonic.tv_sec, t.monotonic.tv_nsec).into(),
                        );
                        details.insert(
                            "boottime".into(),
                            format!("{}.{:09}", t.boottime.tv_sec, t.boottime.tv_nsec).into(),
                        );
                        true
                    } else {
                        false
                    }
                }
                "pid" => has(format!("pidns-{id}.img")),
                "user" => has(format!("userns-{id}.img")),
                _ => false,
            };
            out.push(Namespace {
                kind: kind.into(),
                id,
                saved,
                pids,
                details,
            });
        }
        out
    }

    pub(super) fn cgroups(&mut self, o: &Options) -> Option<Cgroups> {
        let cg =
            img_one::<pb::CgroupEntry>(&self.src, "cgroup.img", image::CGROUP, &mut self.notes)?;
        let dumper = self.inventory.as_ref().and_then(|i| i.root_cg_set);
        let mut sets = Vec::new();
        for s in &cg.sets {
            let pids: Vec<u32> = self
                .tasks
                .iter()
                .filter(|t| {
                    let tc = t.core.as_ref().and_then(|c| c.tc.as_ref());
                    let th = t.core.as_ref().and_then(|c| c.thread_core.as_ref());
                    th.and_then(|c| c.cg_set).or(tc.and_then(|c| c.cg_set)) == Some(s.id)
                })
                .map(|t| t.pid())
                .filter(|p| o.pid.is_none_or(|q| q == *p))
                .collect();
            if o.pid.is_some() && pids.is_empty() {
                continue;
            }
            sets.push(CgroupSet {
                id: s.id,
                dumper: dumper == Some(s.id),
                pids,
                paths: s
                    .ctls
                    .iter()
                    .map(|c| (c.name.clone(), c.path.clone()))
                    .collect(),
            });
        }
        let mut dirs = Vec::new();
        fn walk(c: &str, base: &str, d: &pb::CgroupDirEntry, out: &mut Vec<CgroupDir>) {
            let path = format!(
                "{}/{}",
                base.trim_end_matches('/'),
                d.dir_name.trim_start_matches('/')
            );
            out.push(CgroupDir {
                controllers: c.to_string(),
                path: path.clone(),
                properties: d
                    .properties
                    .iter()
                    .map(|p| (p.name.clone(), p.value.clone()))
                    .collect(),
            });
            for ch in &d.children {
                walk(c, &path, ch, out);
            }
        }
        for c in &cg.controllers {
            let names = c.cnames.join(",");
            for d in &c.dirs {
                walk(&names, "", d, &mut dirs);
            }
        }
        Some(Cgroups { sets, dirs })
    }
}
