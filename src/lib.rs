//! cryo: checkpoint/restore for Linux processes, writing CRIU-compatible images.
//!
//! Map of the crate (see docs/ARCHITECTURE.md for the pipelines):
//! - `sys`: the only `unsafe` code — ptrace, remote syscalls, cross-process memory, clone3.
//! - `procfs`: parsers for /proc files.
//! - `image`: CRIU image framing, magic numbers, generated protobuf types, the digest manifest.
//! - `kinds`: one module per kernel object kind, dump and restore side by side.
//! - `dump`, `restore`: the two pipelines that call the kinds in order.
//! - `migrate`: live migration (`cryo migrate` / `cryo receive`): pre-copy rounds, hand-over.
//! - `features`: kernel feature probes (`cryo check`).
//! - `show`: decode any image to JSON (`cryo show`).
//! - `inspect`: what a checkpoint holds, and two compared (`cryo inspect`, `cryo diff`).
//! - `logging`: CRIU-style log files and levels.

// Only `sys` may use `unsafe` (each block with a `// SAFETY:` comment).
#![deny(unsafe_code)]

pub mod cli;
pub mod dump;
pub mod fault;
pub mod features;
pub mod image;
pub mod inspect;
pub mod kinds;
pub mod lazy;
pub mod logging;
pub mod memtrack;
pub mod migrate;
pub mod netlock;
pub mod notify;
pub mod num;
pub mod pageserver;
pub mod privilege;
pub mod procfs;
pub mod progress;
pub mod restore;
pub mod rpc;
pub mod show;
pub mod stage;
#[allow(unsafe_code)]
pub mod sys;
