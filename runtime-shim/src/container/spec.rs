//! Builds the OCI runtime spec of a container from its CRI config, its image and its
//! sandbox. Starts from oci-spec's defaults (standard mounts, masked and read-only
//! paths, the default capability set) and applies what CRI asks for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use k8s_cri::v1::{ContainerConfig, MountPropagation};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

use crate::image::store::ImageRecord;

/// What a container gets from its sandbox.
pub struct SandboxContext<'a> {
    /// Pinned namespace files to join (network, ipc, uts); `None` means the host's.
    pub netns: Option<&'a Path>,
    pub ipcns: Option<&'a Path>,
    pub utsns: Option<&'a Path>,
    /// The pod-wide PID namespace, when the pod has one (PID mode POD).
    pub pidns: Option<&'a Path>,
    pub hostname: &'a str,
    /// Files bind-mounted over the image's: /etc/hosts, /etc/resolv.conf, /etc/hostname.
    pub etc_files: Vec<(&'static str, PathBuf)>,
    /// cgroupfs parent from the sandbox config (`/kubepods/...`), if any.
    pub cgroup_parent: &'a str,
    pub shm: Option<&'a Path>,
    /// Namespaced sysctls of the pod, applied in every container (runc sets them).
    pub sysctls: HashMap<String, String>,
}

/// The oom_score_adj this process runs with; children may not go lower here
/// (ENVIRONMENT.md: lowering it is denied and runc then fails obscurely).
fn own_oom_score_adj() -> i32 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

pub struct BuiltSpec {
    pub spec: Spec,
    pub cgroups_path: String,
}

pub fn build(
    id: &str,
    cfg: &ContainerConfig,
    image: &ImageRecord,
    rootfs: &Path,
    sandbox: &SandboxContext<'_>,
) -> Result<BuiltSpec> {
    let linux_cfg = cfg.linux.clone().unwrap_or_default();
    let sec = linux_cfg.security_context.clone().unwrap_or_default();

    // Docker semantics: command replaces ENTRYPOINT, args replace CMD.
    let args: Vec<String> = if !cfg.command.is_empty() {
        cfg.command.iter().chain(&cfg.args).cloned().collect()
    } else if !cfg.args.is_empty() {
        image
            .config
            .entrypoint
            .iter()
            .chain(&cfg.args)
            .cloned()
            .collect()
    } else {
        image
            .config
            .entrypoint
            .iter()
            .chain(&image.config.cmd)
            .cloned()
            .collect()
    };
    if args.is_empty() {
        bail!("no command: the container config and the image both leave it empty");
    }

    let mut env: Vec<(String, String)> = vec![];
    let mut set_env = |k: &str, v: &str| match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    set_env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    for e in &image.config.env {
        if let Some((k, v)) = e.split_once('=') {
            set_env(k, v);
        }
    }
    set_env("HOSTNAME", sandbox.hostname);
    for kv in &cfg.envs {
        set_env(&kv.key, &kv.value);
    }
    let env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();

    let cwd = [cfg.working_dir.as_str(), image.config.working_dir.as_str()]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or("/")
        .to_string();

    let user = resolve_user(rootfs, &sec, &image.config.user)?;
    let mut process = ProcessBuilder::default()
        .args(args)
        .env(env)
        .cwd(cwd)
        .terminal(cfg.tty)
        .no_new_privileges(sec.no_new_privs)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.groups.clone())
                .build()?,
        );
    let caps = capabilities(&sec)?;
    let seccomp = super::seccomp::for_container(&sec, &caps)?;
    process = process.capabilities(
        // Inheritable and ambient stay empty (oci-spec's builder would otherwise fill
        // them with its defaults): ambient capabilities would reach non-root processes,
        // and an ambient capability outside the permitted set makes runc fail.
        LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps)
            .inheritable(oci_spec::runtime::Capabilities::new())
            .ambient(oci_spec::runtime::Capabilities::new())
            .build()?,
    );
    let resources = linux_cfg.resources.clone().unwrap_or_default();
    let wanted_oom = resources.oom_score_adj as i32;
    process = process.oom_score_adj(wanted_oom.max(own_oom_score_adj()));

    let mut spec = Spec::default();
    spec.set_hostname(Some(sandbox.hostname.to_string()));
    spec.set_process(Some(process.build()?));
    spec.set_root(Some(
        RootBuilder::default()
            .path(rootfs)
            .readonly(sec.readonly_rootfs)
            .build()?,
    ));

    let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
    if let Some(shm) = sandbox.shm {
        mounts.retain(|m| m.destination() != Path::new("/dev/shm"));
        mounts.push(bind(shm, "/dev/shm", false, "rprivate")?);
    }
    for (dest, src) in &sandbox.etc_files {
        // A CRI mount for the same path (the kubelet's /etc/hosts) wins.
        if !cfg.mounts.iter().any(|m| m.container_path == *dest) {
            mounts.push(bind(src, dest, false, "rprivate")?);
        }
    }
    // runc turns the container's / into rslave before binding volumes, which cuts a
    // bidirectional volume off from its host peers; as containerd does, make / rshared
    // when a volume is bidirectional (rslave stays the default otherwise).
    let mut rootfs_propagation = None;
    for m in &cfg.mounts {
        let propagation = match MountPropagation::try_from(m.propagation) {
            Ok(MountPropagation::PropagationHostToContainer) => "rslave",
            Ok(MountPropagation::PropagationBidirectional) => {
                rootfs_propagation = Some("rshared");
                "rshared"
            }
            _ => "rprivate",
        };
        let host = Path::new(&m.host_path);
        if !host.exists() {
            // Upstream creates missing hostPath sources as directories.
            std::fs::create_dir_all(host)
                .with_context(|| format!("creating mount source {}", host.display()))?;
        }
        mounts.retain(|x| x.destination() != Path::new(&m.container_path));
        mounts.push(bind(host, &m.container_path, m.readonly, propagation)?);
    }
    if sec.privileged {
        // Privileged containers see the host's /sys read-write.
        for m in mounts.iter_mut() {
            if m.destination() == Path::new("/sys") {
                m.set_options(Some(vec![
                    "nosuid".into(),
                    "noexec".into(),
                    "nodev".into(),
                    "rw".into(),
                ]));
            }
        }
    }
    spec.set_mounts(Some(mounts));

    let pid_mode = sec
        .namespace_options
        .as_ref()
        .map(|n| n.pid)
        .unwrap_or_default();
    let mut namespaces: Vec<LinuxNamespace> = vec![ns(LinuxNamespaceType::Mount, None)?];
    // hostPID: no PID namespace at all; POD: the pod's, held by its infra process
    // (a pod without one has no pod-wide namespace: one per container, as CONTAINER).
    if pid_mode == k8s_cri::v1::NamespaceMode::Pod as i32 && sandbox.pidns.is_some() {
        namespaces.push(ns(LinuxNamespaceType::Pid, sandbox.pidns)?);
    } else if pid_mode != k8s_cri::v1::NamespaceMode::Node as i32 {
        namespaces.push(ns(LinuxNamespaceType::Pid, None)?);
    }
    for (typ, path) in [
        (LinuxNamespaceType::Network, sandbox.netns),
        (LinuxNamespaceType::Ipc, sandbox.ipcns),
        (LinuxNamespaceType::Uts, sandbox.utsns),
    ] {
        if let Some(p) = path {
            namespaces.push(ns(typ, Some(p))?);
        }
    }
    let cgroups_path = if sandbox.cgroup_parent.is_empty() {
        format!("/runtime-shim/{id}")
    } else {
        format!("{}/{id}", sandbox.cgroup_parent.trim_end_matches('/'))
    };
    let mut res = LinuxResourcesBuilder::default();
    let mut cpu = LinuxCpuBuilder::default();
    if resources.cpu_shares > 0 {
        cpu = cpu.shares(resources.cpu_shares as u64);
    }
    if resources.cpu_quota > 0 {
        cpu = cpu.quota(resources.cpu_quota);
    }
    if resources.cpu_period > 0 {
        cpu = cpu.period(resources.cpu_period as u64);
    }
    res = res.cpu(cpu.build()?);
    if resources.memory_limit_in_bytes > 0 {
        res = res.memory(
            LinuxMemoryBuilder::default()
                .limit(resources.memory_limit_in_bytes)
                .build()?,
        );
    }
    let default_linux = spec.linux().clone().unwrap_or_default();
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&cgroups_path))
        .resources(res.build()?)
        .sysctl(sandbox.sysctls.clone());
    if !sec.privileged {
        let masked = if sec.masked_paths.is_empty() {
            default_linux.masked_paths().clone().unwrap_or_default()
        } else {
            sec.masked_paths.clone()
        };
        let readonly = if sec.readonly_paths.is_empty() {
            default_linux.readonly_paths().clone().unwrap_or_default()
        } else {
            sec.readonly_paths.clone()
        };
        linux = linux.masked_paths(masked).readonly_paths(readonly);
    }
    if let Some(filter) = seccomp {
        linux = linux.seccomp(filter);
    }
    if let Some(p) = rootfs_propagation {
        linux = linux.rootfs_propagation(p);
    }
    spec.set_linux(Some(linux.build()?));
    Ok(BuiltSpec { spec, cgroups_path })
}

fn ns(typ: LinuxNamespaceType, path: Option<&Path>) -> Result<LinuxNamespace> {
    let mut b = LinuxNamespaceBuilder::default().typ(typ);
    if let Some(p) = path {
        b = b.path(p);
    }
    Ok(b.build()?)
}

fn bind(src: &Path, dest: &str, readonly: bool, propagation: &str) -> Result<Mount> {
    let mut options = vec!["rbind".to_string(), propagation.to_string()];
    options.push(if readonly { "ro" } else { "rw" }.to_string());
    Ok(MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(src)
        .options(options)
        .build()?)
}

/// Docker's default capability set, which CRI runtimes grant unless told otherwise.
const DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

fn capabilities(
    sec: &k8s_cri::v1::LinuxContainerSecurityContext,
) -> Result<oci_spec::runtime::Capabilities> {
    // CRI names come with or without the CAP_ prefix; the OCI name always has it.
    let parse = |name: &str| -> Result<Capability> {
        let n = name.to_ascii_uppercase();
        let n = if n.starts_with("CAP_") {
            n
        } else {
            format!("CAP_{n}")
        };
        serde_json::from_value(serde_json::Value::String(n))
            .map_err(|_| anyhow::anyhow!("unknown capability {name}"))
    };
    let all = strum_like_all::held;
    let mut caps: std::collections::HashSet<Capability> = if sec.privileged {
        all().into_iter().collect()
    } else {
        DEFAULT_CAPS.into_iter().collect()
    };
    if let Some(c) = &sec.capabilities {
        for name in &c.add_capabilities {
            if name.eq_ignore_ascii_case("ALL") {
                caps.extend(all());
            } else {
                caps.insert(parse(name)?);
            }
        }
        for name in &c.drop_capabilities {
            if name.eq_ignore_ascii_case("ALL") {
                caps.clear();
            } else {
                caps.remove(&parse(name)?);
            }
        }
    }
    Ok(caps.into_iter().collect())
}

/// Every capability, in kernel numbering (the index is the capability's number).
mod strum_like_all {
    use oci_spec::runtime::Capability::{self, *};
    pub const ALL: [Capability; 41] = [
        Chown,
        DacOverride,
        DacReadSearch,
        Fowner,
        Fsetid,
        Kill,
        Setgid,
        Setuid,
        Setpcap,
        LinuxImmutable,
        NetBindService,
        NetBroadcast,
        NetAdmin,
        NetRaw,
        IpcLock,
        IpcOwner,
        SysModule,
        SysRawio,
        SysChroot,
        SysPtrace,
        SysPacct,
        SysAdmin,
        SysBoot,
        SysNice,
        SysResource,
        SysTime,
        SysTtyConfig,
        Mknod,
        Lease,
        AuditWrite,
        AuditControl,
        Setfcap,
        MacOverride,
        MacAdmin,
        Syslog,
        WakeAlarm,
        BlockSuspend,
        AuditRead,
        Perfmon,
        Bpf,
        CheckpointRestore,
    ];

    /// "All" means all that we hold: a container cannot get a capability missing from
    /// the runtime's own bounding set (runc then fails with "unable to apply caps").
    pub fn held() -> Vec<Capability> {
        let bounding = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapBnd:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .unwrap_or(u64::MAX);
        ALL.iter()
            .enumerate()
            .filter(|(i, _)| bounding & (1u64 << i) != 0)
            .map(|(_, c)| *c)
            .collect()
    }
}

pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// uid/gid/supplementary groups from the security context or the image's USER,
/// resolved against the image's /etc/passwd and /etc/group (never the host's).
pub fn resolve_user(
    rootfs: &Path,
    sec: &k8s_cri::v1::LinuxContainerSecurityContext,
    image_user: &str,
) -> Result<ResolvedUser> {
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let lookup_user = |name: &str| -> Option<(u32, u32, String)> {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && (f[0] == name || f[2] == name))
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?, f[0].to_string())))
                .flatten()
        })
    };
    let lookup_group = |name: &str| -> Option<u32> {
        name.parse().ok().or_else(|| {
            group.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 3 && f[0] == name)
                    .then(|| f[2].parse().ok())
                    .flatten()
            })
        })
    };
    let (user_part, group_part) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    let (uid, mut gid, name) = if let Some(u) = &sec.run_as_user {
        let uid = u.value as u32;
        let (g, n) = lookup_user(&uid.to_string())
            .map(|(_, g, n)| (g, n))
            .unwrap_or((0, String::new()));
        (uid, g, n)
    } else if !sec.run_as_username.is_empty() {
        lookup_user(&sec.run_as_username)
            .with_context(|| format!("user {} not found in the image", sec.run_as_username))?
    } else if user_part.is_empty() {
        (0, 0, "root".to_string())
    } else if let Ok(uid) = user_part.parse::<u32>() {
        let (g, n) = lookup_user(user_part)
            .map(|(_, g, n)| (g, n))
            .unwrap_or((0, String::new()));
        (uid, g, n)
    } else {
        lookup_user(user_part)
            .with_context(|| format!("image user {user_part} not found in its /etc/passwd"))?
    };
    if sec.run_as_user.is_none()
        && sec.run_as_username.is_empty()
        && let Some(g) = group_part
    {
        gid = lookup_group(g).with_context(|| format!("image group {g} not found"))?;
    }
    if let Some(g) = &sec.run_as_group {
        gid = g.value as u32;
    }
    let mut groups = vec![gid];
    if !name.is_empty() && sec.supplemental_groups_policy == 0 {
        for l in group.lines() {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() >= 4
                && f[3].split(',').any(|m| m == name)
                && let Ok(g) = f[2].parse::<u32>()
            {
                groups.push(g);
            }
        }
    }
    groups.extend(sec.supplemental_groups.iter().map(|g| *g as u32));
    groups.sort_unstable();
    groups.dedup();
    Ok(ResolvedUser { uid, gid, groups })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{Int64Value, LinuxContainerSecurityContext};

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/false\ndefault-user:x:1000:1000::/home:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nwww-data:x:33:\nusers:x:100:\ngroup-defined-in-image:x:50000:default-user\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn users_resolve_from_the_image() {
        let r = rootfs();
        let sec = LinuxContainerSecurityContext::default();
        let u = resolve_user(r.path(), &sec, "www-data").unwrap();
        assert_eq!((u.uid, u.gid), (33, 33));
        let u = resolve_user(r.path(), &sec, "1003:users").unwrap();
        assert_eq!((u.uid, u.gid), (1003, 100));
        let u = resolve_user(r.path(), &sec, "").unwrap();
        assert_eq!((u.uid, u.gid), (0, 0));
        assert!(resolve_user(r.path(), &sec, "nobody-here").is_err());
        // runAsUser + supplemental groups merge with the image's /etc/group.
        let sec = LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 1000 }),
            supplemental_groups: vec![1234],
            ..Default::default()
        };
        let u = resolve_user(r.path(), &sec, "").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.groups, vec![1000, 1234, 50000]);
    }

    #[test]
    fn no_ambient_or_inheritable_capabilities() {
        let r = rootfs();
        let image = ImageRecord {
            id: crate::image::reference::Digest::of(b"i"),
            repo_tags: vec![],
            repo_digests: vec![],
            size: 0,
            layers: vec![],
            config: crate::image::store::RuntimeConfig {
                cmd: vec!["sh".into()],
                ..Default::default()
            },
            pinned: false,
        };
        let ctx = SandboxContext {
            netns: None,
            ipcns: None,
            utsns: None,
            pidns: None,
            hostname: "h",
            etc_files: vec![],
            cgroup_parent: "",
            shm: None,
            sysctls: HashMap::new(),
        };
        let built = build("id", &ContainerConfig::default(), &image, r.path(), &ctx).unwrap();
        let caps = built
            .spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        assert!(caps.ambient().as_ref().unwrap().is_empty());
        assert!(caps.inheritable().as_ref().unwrap().is_empty());
        assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
    }

    #[test]
    fn capabilities_follow_add_and_drop() {
        let mut sec = LinuxContainerSecurityContext::default();
        assert_eq!(capabilities(&sec).unwrap().len(), 14);
        sec.capabilities = Some(k8s_cri::v1::Capability {
            add_capabilities: vec!["NET_ADMIN".into()],
            drop_capabilities: vec!["CAP_KILL".into()],
            ..Default::default()
        });
        let caps = capabilities(&sec).unwrap();
        assert!(caps.contains(&Capability::NetAdmin));
        assert!(!caps.contains(&Capability::Kill));
        sec.capabilities.as_mut().unwrap().add_capabilities = vec!["BOGUS".into()];
        assert!(capabilities(&sec).is_err());
        sec.privileged = true;
        sec.capabilities = None;
        let held: std::collections::HashSet<_> = strum_like_all::held().into_iter().collect();
        assert_eq!(capabilities(&sec).unwrap(), held);
    }
}
