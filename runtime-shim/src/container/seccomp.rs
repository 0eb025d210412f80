//! The seccomp filter of a container, from its CRI security context: `RuntimeDefault`
//! is our built-in profile, `Localhost` an OCI seccomp JSON file on the node,
//! `Unconfined` (and a context that names no profile, and any privileged container)
//! none, as containerd decides.
//!
//! The built-in profile follows the documented Docker/containerd default: deny with
//! EPERM unless listed; everything a normal program needs is listed; syscalls that
//! reach across the container's isolation (namespaces, mounts, modules, keyrings,
//! clocks, reboot, tracing other processes' memory) are allowed only when the container
//! holds the capability that already guards them, so adding a capability keeps its
//! meaning; `clone` may not make namespaces without CAP_SYS_ADMIN, and `clone3`, whose
//! flags a filter cannot read, answers ENOSYS so libc falls back to `clone`.

use std::collections::HashSet;

use anyhow::{Context, Result, bail};
use k8s_cri::v1::LinuxContainerSecurityContext;
use k8s_cri::v1::security_profile::ProfileType;
use oci_spec::runtime::{Capability, LinuxSeccomp};
use serde_json::{Value, json};

/// Allowed for every container.
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat",
    "capget", "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime",
    "clock_adjtime64", "clock_getres", "clock_getres_time64", "clock_gettime",
    "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "close", "close_range",
    "connect", "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create",
    "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2",
    "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit",
    "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32",
    "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork",
    "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64",
    "fsync", "ftruncate", "ftruncate64", "futex", "futex_requeue", "futex_time64",
    "futex_wait", "futex_waitv", "futex_wake", "futimesat", "get_robust_list",
    "get_thread_area", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32",
    "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer",
    "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom",
    "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit", "getrusage",
    "getsid", "getsockname", "getsockopt", "gettid", "gettimeofday", "getuid", "getuid32",
    "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch",
    "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64",
    "io_setup", "io_submit", "ioctl", "ioprio_get", "ioprio_set", "ipc", "kill",
    "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "lchown",
    "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr", "llistxattr",
    "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise",
    "map_shadow_stack", "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir",
    "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2",
    "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap",
    "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open", "openat",
    "openat2", "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64",
    "preadv", "preadv2", "prlimit64", "process_mrelease", "pselect6", "pselect6_time64",
    "ptrace", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink",
    "readlinkat", "readv", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg",
    "remap_file_pages", "removexattr", "rename", "renameat", "renameat2", "restart_syscall",
    "rmdir", "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo",
    "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity",
    "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp",
    "select", "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send",
    "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto", "set_robust_list",
    "set_thread_area", "set_tid_address", "setfsgid", "setfsgid32", "setfsuid",
    "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer", "setpgid",
    "setpriority", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid",
    "setresuid32", "setreuid", "setreuid32", "setrlimit", "setsid", "setsockopt", "setuid",
    "setuid32", "setxattr", "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack",
    "signalfd", "signalfd4", "sigprocmask", "sigreturn", "socket", "socketcall",
    "socketpair", "splice", "stat", "stat64", "statfs", "statfs64", "statx", "symlink",
    "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time",
    "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64",
    "timer_settime", "timer_settime64", "timerfd_create", "timerfd_gettime",
    "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times", "tkill",
    "truncate", "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "utime",
    "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid",
    "waitpid", "write", "writev",
    // x86-specific: thread-local storage set-up and the LDT.
    "arch_prctl", "modify_ldt",
];

/// Allowed only with the capability that guards them anyway.
const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "init_module", "finit_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
        ],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysTime,
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
/// CLONE_NEWPID | CLONE_NEWNET: what plain `clone` may not ask for.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
/// Execution domains a process may switch to: Linux, with the UNAME26 or
/// ADDR_NO_RANDOMIZE bits, and the query value 0xffffffff.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];
const ENOSYS: u32 = 38;
const EPERM: u32 = 1;

/// The filter the container gets, `None` for no filter.
pub fn for_container(
    sec: &LinuxContainerSecurityContext,
    caps: &HashSet<Capability>,
) -> Result<Option<LinuxSeccomp>> {
    if sec.privileged {
        return Ok(None);
    }
    let (typ, localhost) = match &sec.seccomp {
        Some(p) => (
            ProfileType::try_from(p.profile_type)
                .map_err(|_| anyhow::anyhow!("unknown seccomp profile type {}", p.profile_type))?,
            p.localhost_ref.clone(),
        ),
        // The deprecated string form, as containerd still reads it.
        #[allow(deprecated)]
        None => match sec.seccomp_profile_path.as_str() {
            "" | "unconfined" => return Ok(None),
            "runtime/default" | "docker/default" => (ProfileType::RuntimeDefault, String::new()),
            p => match p.strip_prefix("localhost/") {
                Some(path) => (ProfileType::Localhost, path.to_string()),
                None => bail!("unknown seccomp profile {p:?}"),
            },
        },
    };
    match typ {
        ProfileType::Unconfined => Ok(None),
        ProfileType::RuntimeDefault => Ok(Some(runtime_default(caps))),
        ProfileType::Localhost => localhost_profile(&localhost).map(Some),
    }
}

/// An OCI seccomp JSON file; the path must be absolute (CRI's rule).
fn localhost_profile(path: &str) -> Result<LinuxSeccomp> {
    if !path.starts_with('/') {
        bail!("seccomp profile {path:?} is not an absolute path");
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading seccomp profile {path}"))?;
    serde_json::from_str(&text).with_context(|| format!("parsing seccomp profile {path}"))
}

/// The built-in profile for a container holding `caps` (its bounding set).
pub fn runtime_default(caps: &HashSet<Capability>) -> LinuxSeccomp {
    let mut names: Vec<&str> = ALLOWED.to_vec();
    for (cap, calls) in BY_CAPABILITY {
        if caps.contains(cap) {
            names.extend_from_slice(calls);
        }
    }
    names.sort_unstable();
    names.dedup();
    let mut syscalls = vec![json!({"names": names, "action": "SCMP_ACT_ALLOW"})];
    for p in PERSONALITIES {
        syscalls.push(json!({
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": p, "op": "SCMP_CMP_EQ"}],
        }));
    }
    if !caps.contains(&Capability::SysAdmin) {
        syscalls.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                      "op": "SCMP_CMP_MASKED_EQ"}],
        }));
        syscalls.push(json!({
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": ENOSYS,
        }));
    }
    let profile: Value = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls,
    });
    serde_json::from_value(profile).expect("the built-in profile is valid OCI seccomp")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::SecurityProfile;
    use oci_spec::runtime::LinuxSeccompAction;

    fn allowed(p: &LinuxSeccomp) -> HashSet<String> {
        p.syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|s| s.args().is_none() && s.action() == LinuxSeccompAction::ScmpActAllow)
            .flat_map(|s| s.names().clone())
            .collect()
    }

    fn ctx(typ: ProfileType, localhost_ref: &str) -> LinuxContainerSecurityContext {
        LinuxContainerSecurityContext {
            seccomp: Some(SecurityProfile {
                profile_type: typ as i32,
                localhost_ref: localhost_ref.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn namespace_and_mount_calls_need_cap_sys_admin() {
        let plain = runtime_default(&HashSet::new());
        let names = allowed(&plain);
        for blocked in [
            "unshare", "mount", "setns", "keyctl", "add_key", "reboot", "clone3",
        ] {
            assert!(!names.contains(blocked), "{blocked} allowed");
        }
        assert!(names.contains("read") && names.contains("execve"));
        let json = serde_json::to_value(&plain).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(
            json["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        let admin = runtime_default(&[Capability::SysAdmin].into_iter().collect());
        let names = allowed(&admin);
        assert!(names.contains("unshare") && names.contains("mount") && names.contains("clone"));
        assert!(!names.contains("reboot"));
    }

    #[test]
    fn profile_types_as_containerd_reads_them() {
        let none = HashSet::new();
        assert!(for_container(&Default::default(), &none).unwrap().is_none());
        assert!(
            for_container(&ctx(ProfileType::Unconfined, ""), &none)
                .unwrap()
                .is_none()
        );
        assert!(
            for_container(&ctx(ProfileType::RuntimeDefault, ""), &none)
                .unwrap()
                .is_some()
        );
        let mut privileged = ctx(ProfileType::RuntimeDefault, "");
        privileged.privileged = true;
        assert!(for_container(&privileged, &none).unwrap().is_none());
        #[allow(deprecated)]
        let old = LinuxContainerSecurityContext {
            seccomp_profile_path: "runtime/default".into(),
            ..Default::default()
        };
        assert!(for_container(&old, &none).unwrap().is_some());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(
            &path,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        let p = for_container(&ctx(ProfileType::Localhost, path.to_str().unwrap()), &none)
            .unwrap()
            .unwrap();
        assert_eq!(
            p.syscalls().as_ref().unwrap()[0].names(),
            &["mkdir".to_string()]
        );
        for bad in ["relative.json", "/no/such/profile.json"] {
            assert!(for_container(&ctx(ProfileType::Localhost, bad), &none).is_err());
        }
        std::fs::write(&path, "{not json").unwrap();
        let err =
            for_container(&ctx(ProfileType::Localhost, path.to_str().unwrap()), &none).unwrap_err();
        assert!(
            format!("{err:#}").contains("parsing seccomp profile"),
            "{err:#}"
        );
    }
}
