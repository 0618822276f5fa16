//! Unix sockets beyond the common shapes (issue #12): files passed in queued messages
//! (SCM_RIGHTS), relative names, socket files deleted or replaced, socket file modes and
//! owners, unconnected sockets, datagram sockets connected to themselves or holding
//! messages from peers that are gone. Each test runs integration/scripts/unix_edges.py,
//! dumps and restores it, and checks what the program itself sees afterwards.

use integration::*;

/// Runs one case of unix_edges.py through a dump and a restore; returns its check lines.
fn run_case(case: &str) -> Vec<String> {
    let dir = scratch(&format!("unixedge-{case}"));
    let out = dir.join("out");
    let script = root().join("integration/scripts/unix_edges.py");
    let pid = spawn(
        &[
            "python3",
            script.to_str().unwrap(),
            case,
            dir.to_str().unwrap(),
        ],
        &out,
    );
    let _g = KillOnDrop(pid);
    wait_ready(&out);
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    signal(pid, libc::SIGUSR1);
    wait_for("the checks", 20, || {
        lines(&out)
            .iter()
            .any(|l| l == "done" || l.starts_with("Traceback"))
    });
    let got = lines(&out);
    assert!(
        got.iter()
            .all(|l| !l.starts_with("BAD") && !l.starts_with("Traceback")),
        "{}",
        got.join("\n")
    );
    got
}

/// Files passed in messages still queued at the dump, and closed by the sender, come back
/// with the messages: a pipe end that still reaches its other end, an epoll still watching
/// its socket, a regular file at its offset, two fds in one seqpacket message, an fd on a
/// stream.
#[test]
fn files_passed_in_queued_messages_come_back() {
    let got = run_case("scm");
    assert_eq!(
        got.iter().filter(|l| l.starts_with("ok")).count(),
        5,
        "{got:?}"
    );
}

/// A name bound relative to a directory the program left, with its file's mode and owner;
/// a listener whose directory was removed; a datagram socket whose file was replaced by a
/// FIFO. Peers still reach them, names read back as bound, the file system is left as it
/// was (no directory made again, the FIFO in place, no helper links).
#[test]
fn relative_and_deleted_socket_names() {
    let got = run_case("names");
    assert_eq!(
        got.iter().filter(|l| l.starts_with("ok")).count(),
        8,
        "{got:?}"
    );
}

/// Unconnected stream and seqpacket sockets (reading their queue fails at dump), a datagram
/// socket connected to itself with a message to itself, a datagram left by a peer that
/// closed, datagrams from senders that are gone.
#[test]
fn sockets_in_odd_states() {
    let got = run_case("states");
    assert_eq!(
        got.iter().filter(|l| l.starts_with("ok")).count(),
        5,
        "{got:?}"
    );
}

/// Sockets in flight in their own queues (zdtm scm06): a datagram socketpair with abstract
/// names whose ends were each passed over each end, and two pairs each holding an end of
/// the other in its queue, come back once each (the restore made the first pair twice and
/// failed with EADDRINUSE): each received socket is the one that was sent.
#[test]
fn sockets_passed_over_themselves() {
    let got = run_case("loop");
    assert_eq!(
        got.iter().filter(|l| l.starts_with("ok")).count(),
        2,
        "{got:?}"
    );
}
