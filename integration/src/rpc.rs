//! cryo's RPC service (`cryo swrk FD`) driven as runc and go-criu drive it: one request per
//! process over a SOCK_SEQPACKET socketpair, NOTIFY round trips acknowledged by the caller.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use cryo::image::pb;
use prost::Message;

use crate::WaitWithin;

/// A running `cryo swrk 3` and our end of its socket.
pub struct Swrk {
    pub child: Child,
    pub sk: OwnedFd,
}

pub fn swrk() -> Swrk {
    swrk_as(&crate::cryo_bin(), None)
}

/// `bin swrk 3` run as user `uid` (its groups and gid the same number) when given.
pub fn swrk_as(bin: &Path, uid: Option<u32>) -> Swrk {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for two fds.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: both fds are new.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let t = theirs.as_raw_fd();
    let mut c = Command::new(bin);
    c.args(["swrk", "3"]).stdin(Stdio::null());
    // SAFETY: only async-signal-safe calls (dup2, setgroups, setres[ug]id) between fork and
    // exec.
    unsafe {
        c.pre_exec(move || {
            if libc::dup2(t, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(u) = uid {
                if libc::setgroups(0, std::ptr::null()) < 0
                    || libc::setresgid(u, u, u) < 0
                    || libc::setresuid(u, u, u) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = c.spawn().unwrap();
    drop(theirs);
    Swrk { child, sk: ours }
}

impl Swrk {
    pub fn send(&self, req: &pb::CriuReq) {
        let b = req.encode_to_vec();
        // SAFETY: b is valid for reads of its length.
        let n = unsafe { libc::send(self.sk.as_raw_fd(), b.as_ptr().cast(), b.len(), 0) };
        assert_eq!(usize::try_from(n).ok(), Some(b.len()));
    }

    pub fn recv(&self) -> pb::CriuResp {
        let mut buf = vec![0u8; 65536];
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(self.sk.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(n > 0, "swrk closed the socket");
        pb::CriuResp::decode(&buf[..usize::try_from(n).unwrap()]).unwrap()
    }

    /// Sends `req`, acknowledges every NOTIFY (`refuse` answers that one with failure),
    /// and returns the notifications seen and the final response.
    pub fn call(
        mut self,
        req: &pb::CriuReq,
        refuse: Option<&str>,
    ) -> (Vec<(String, Option<i32>)>, pb::CriuResp, bool) {
        self.send(req);
        let mut seen = Vec::new();
        loop {
            let r = self.recv();
            if r.r#type != pb::CriuReqType::Notify as i32 {
                let ok = self
                    .child
                    .wait_within("cryo swrk", crate::CHILD_SECS)
                    .success();
                return (seen, r, ok);
            }
            let n = r.notify.unwrap();
            let name = n.script.unwrap_or_default();
            let ok = refuse != Some(name.as_str());
            seen.push((name, n.pid));
            self.send(&pb::CriuReq {
                r#type: pb::CriuReqType::Notify as i32,
                notify_success: Some(ok),
                ..Default::default()
            });
        }
    }
}

/// A request of type `ty` with `opts`.
pub fn req(ty: pb::CriuReqType, opts: Option<pb::CriuOpts>) -> pb::CriuReq {
    pb::CriuReq {
        r#type: ty as i32,
        opts,
        ..Default::default()
    }
}
