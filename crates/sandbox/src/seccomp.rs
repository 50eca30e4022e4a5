//! The default system-call allow-list: what Node and Python MCP servers
//! (and the programs they start) use, and nothing that reconfigures the
//! kernel, other processes or the sandbox itself. Any other call kills the
//! whole process (`SECCOMP_RET_KILL_PROCESS`, seen by the gateway as
//! `SIGSYS`).
//!
//! Left out on purpose: `ptrace`, `process_vm_readv`/`writev`, `bpf`,
//! `perf_event_open`, `userfaultfd`, `io_uring_*`, `mount`, `umount2`,
//! `pivot_root`, `chroot`, `unshare`, `setns`, `keyctl`, `add_key`,
//! `request_key`, the `set*id` calls, `personality`, `kexec_*`, `*_module`,
//! `open_by_handle_at`, `syslog`, `reboot`, `swapon`, clock and host-name
//! setters. `clone` is allowed only without namespace flags; `clone3`
//! (whose flags a filter cannot read) answers `ENOSYS`, so C libraries fall
//! back to `clone`; `ioctl` is allowed except `TIOCSTI` (typing into a
//! terminal).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The namespace flags of `clone` (`CLONE_NEWNS`, `NEWCGROUP`, `NEWUTS`,
/// `NEWIPC`, `NEWUSER`, `NEWPID`, `NEWNET`).
const CLONE_NAMESPACES: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;
/// `TIOCSTI`.
const TIOCSTI: u64 = 0x5412;

macro_rules! sys {
    ($($name:ident),* $(,)?) => { [$(libc::$name),*] };
}

/// Calls allowed with any arguments, on every architecture (system-call
/// numbers are `c_long`, 64 bits on every target seccompiler supports).
#[rustfmt::skip]
const COMMON: &[i64] = &sys![
    SYS_read, SYS_write, SYS_readv, SYS_writev, SYS_pread64, SYS_pwrite64, SYS_preadv,
    SYS_pwritev, SYS_preadv2, SYS_pwritev2, SYS_close, SYS_close_range, SYS_openat, SYS_openat2,
    SYS_lseek, SYS_fstat, SYS_newfstatat, SYS_statx, SYS_statfs, SYS_fstatfs, SYS_getdents64,
    SYS_readlinkat, SYS_faccessat, SYS_faccessat2, SYS_fcntl, SYS_flock, SYS_fsync,
    SYS_fdatasync, SYS_ftruncate, SYS_truncate, SYS_mkdirat, SYS_unlinkat, SYS_renameat2,
    SYS_linkat, SYS_symlinkat, SYS_fchmod, SYS_fchmodat, SYS_utimensat, SYS_getcwd, SYS_chdir,
    SYS_fchdir, SYS_umask, SYS_fadvise64, SYS_fallocate, SYS_copy_file_range, SYS_sendfile,
    SYS_splice, SYS_tee, SYS_memfd_create, SYS_dup, SYS_dup3, SYS_mmap, SYS_munmap,
    SYS_mprotect, SYS_mremap, SYS_madvise, SYS_brk, SYS_msync, SYS_mincore, SYS_mlock,
    SYS_munlock, SYS_membarrier, SYS_pkey_alloc, SYS_pkey_free, SYS_pkey_mprotect, SYS_futex,
    SYS_set_robust_list, SYS_get_robust_list, SYS_rseq, SYS_set_tid_address, SYS_clone3,
    SYS_execve, SYS_execveat, SYS_wait4, SYS_waitid, SYS_exit, SYS_exit_group,
    SYS_rt_sigaction, SYS_rt_sigprocmask, SYS_rt_sigreturn, SYS_rt_sigsuspend,
    SYS_rt_sigtimedwait, SYS_sigaltstack, SYS_kill, SYS_tgkill, SYS_tkill, SYS_getpid,
    SYS_getppid, SYS_gettid, SYS_getuid, SYS_geteuid, SYS_getgid, SYS_getegid, SYS_getresuid,
    SYS_getresgid, SYS_getgroups, SYS_getpgid, SYS_getsid, SYS_setsid, SYS_setpgid, SYS_capget,
    SYS_prctl, SYS_prlimit64, SYS_getrlimit, SYS_getrusage, SYS_times, SYS_sysinfo, SYS_uname,
    SYS_getpriority, SYS_setpriority, SYS_clock_gettime, SYS_clock_getres,
    SYS_clock_nanosleep, SYS_nanosleep, SYS_gettimeofday, SYS_epoll_create1, SYS_epoll_ctl,
    SYS_epoll_pwait, SYS_epoll_pwait2, SYS_eventfd2, SYS_pipe2, SYS_ppoll, SYS_pselect6,
    SYS_timerfd_create, SYS_timerfd_settime, SYS_timerfd_gettime, SYS_signalfd4,
    SYS_inotify_init1, SYS_inotify_add_watch, SYS_inotify_rm_watch, SYS_socket,
    SYS_socketpair, SYS_connect, SYS_bind, SYS_listen, SYS_accept, SYS_accept4,
    SYS_getsockname, SYS_getpeername, SYS_sendto, SYS_recvfrom, SYS_sendmsg, SYS_recvmsg,
    SYS_sendmmsg, SYS_recvmmsg, SYS_shutdown, SYS_setsockopt, SYS_getsockopt, SYS_getrandom,
    SYS_sched_getaffinity, SYS_sched_yield, SYS_sched_getparam, SYS_sched_getscheduler,
    SYS_get_mempolicy, SYS_restart_syscall,
];

/// The older calls x86-64 still has (C libraries and runtimes use some).
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
const LEGACY: &[i64] = &sys![
    SYS_open, SYS_stat, SYS_lstat, SYS_access, SYS_pipe, SYS_dup2, SYS_poll, SYS_select,
    SYS_epoll_wait, SYS_epoll_create, SYS_getdents, SYS_readlink, SYS_rename, SYS_renameat,
    SYS_unlink, SYS_mkdir, SYS_rmdir, SYS_chmod, SYS_link, SYS_symlink, SYS_fork, SYS_vfork,
    SYS_getpgrp, SYS_time, SYS_alarm, SYS_pause, SYS_creat, SYS_utimes, SYS_arch_prctl,
    SYS_setrlimit, SYS_eventfd, SYS_signalfd, SYS_inotify_init,
];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY: &[i64] = &[];

fn arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())
}

fn rule(arg: u8, op: SeccompCmpOp, value: u64) -> Result<Vec<SeccompRule>, String> {
    let c = SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| e.to_string())?;
    Ok(vec![SeccompRule::new(vec![c]).map_err(|e| e.to_string())?])
}

/// The allow-list, killing on anything else.
fn allow_list() -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON
        .iter()
        .chain(LEGACY)
        .map(|n| (*n, Vec::new()))
        .collect();
    rules.insert(
        libc::SYS_clone,
        rule(0, SeccompCmpOp::MaskedEq(CLONE_NAMESPACES), 0)?,
    );
    rules.insert(libc::SYS_ioctl, rule(1, SeccompCmpOp::Ne, TIOCSTI)?);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch()?,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// `clone3` answers `ENOSYS` (stacked with the allow-list, the stricter
/// answer wins).
fn no_clone3() -> Result<BpfProgram, String> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// Installs both filters on this (single-threaded) process.
pub(crate) fn install() -> Result<(), String> {
    let (clone3, allow) = (no_clone3()?, allow_list()?);
    seccompiler::apply_filter(&clone3).map_err(|e| e.to_string())?;
    seccompiler::apply_filter(&allow).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_and_leave_out_the_dangerous_calls() {
        assert!(allow_list().is_ok());
        assert!(no_clone3().is_ok());
        for banned in [
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_bpf,
            libc::SYS_keyctl,
            libc::SYS_setuid,
            libc::SYS_process_vm_readv,
            libc::SYS_io_uring_setup,
            libc::SYS_userfaultfd,
            libc::SYS_personality,
        ] {
            assert!(!COMMON.contains(&banned) && !LEGACY.contains(&banned));
        }
    }
}
