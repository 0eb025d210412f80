//! The CNI_* environment variables of one invocation, checked per command as the spec says.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{CniError, ErrorCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// The variables the spec requires for this command, besides CNI_COMMAND itself.
    fn required(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            // DEL must work after the netns is gone, so CNI_NETNS is optional.
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Command::Gc => &["CNI_PATH"],
            Command::Status | Command::Version => &[],
        }
    }
}

/// The Kubernetes keys runtimes put into CNI_ARGS, plus any others, kept verbatim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct K8sArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_infra_container_id: Option<String>,
    pub pod_uid: Option<String>,
    /// `IgnoreUnknown=1`: the runtime asks plugins not to fail on keys they do not know.
    /// We never fail on unknown keys; the flag is kept for plugins we delegate to.
    pub ignore_unknown: bool,
    pub other: BTreeMap<String, String>,
}

impl K8sArgs {
    /// Parses `K=V;K=V`. A pair without '=' or with an empty key is an error that names it.
    pub fn parse(s: &str) -> Result<K8sArgs, String> {
        let mut out = K8sArgs::default();
        for pair in s.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| format!("{pair:?} is not KEY=VALUE"))?;
            let v = v.to_string();
            match k {
                "K8S_POD_NAMESPACE" => out.pod_namespace = Some(v),
                "K8S_POD_NAME" => out.pod_name = Some(v),
                "K8S_POD_INFRA_CONTAINER_ID" => out.pod_infra_container_id = Some(v),
                "K8S_POD_UID" => out.pod_uid = Some(v),
                "IgnoreUnknown" => {
                    out.ignore_unknown = matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
                }
                _ => {
                    out.other.insert(k.to_string(), v);
                }
            }
        }
        Ok(out)
    }
}

/// One invocation's parameters. Optional fields are `None` when the variable is unset or empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniArgs {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub args: K8sArgs,
    /// CNI_PATH split on ':'; empty entries dropped.
    pub path: Vec<PathBuf>,
}

/// Linux's IFNAMSIZ (16) minus the terminating NUL.
pub const MAX_IFNAME_LEN: usize = 15;

impl CniArgs {
    /// Reads the process environment.
    pub fn from_env() -> Result<CniArgs, CniError> {
        CniArgs::from_lookup(&|k| std::env::var(k).ok())
    }

    /// Reads variables through `get`, so tests need not touch the process environment.
    /// Missing or invalid variables are code 4 and every offending name is listed.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<CniArgs, CniError> {
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        let command = match get("CNI_COMMAND") {
            None => return Err(invalid_env("CNI_COMMAND is not set", "")),
            Some(c) => Command::parse(&c).ok_or_else(|| {
                invalid_env(
                    format!("CNI_COMMAND={c:?} is not a CNI command"),
                    "expected one of ADD, DEL, CHECK, STATUS, GC, VERSION",
                )
            })?,
        };

        let missing: Vec<&str> = command
            .required()
            .iter()
            .copied()
            .filter(|k| get(k).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(invalid_env(
                format!(
                    "missing required environment variables: {}",
                    missing.join(", ")
                ),
                format!("the CNI spec requires them for {command:?}"),
            ));
        }

        let container_id = get("CNI_CONTAINERID");
        if let Some(id) = container_id.as_ref().filter(|id| !valid_container_id(id)) {
            return Err(invalid_env(
                format!("CNI_CONTAINERID={id:?} is invalid"),
                "it must start with a letter or digit and contain only letters, digits, '_', '.' and '-'",
            ));
        }
        let ifname = get("CNI_IFNAME");
        if let Some(name) = &ifname {
            validate_ifname(name)
                .map_err(|why| invalid_env(format!("CNI_IFNAME={name:?} is invalid"), why))?;
        }
        let args = match get("CNI_ARGS") {
            None => K8sArgs::default(),
            Some(s) => {
                K8sArgs::parse(&s).map_err(|why| invalid_env("CNI_ARGS is malformed", why))?
            }
        };
        let path = get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();

        Ok(CniArgs {
            command,
            container_id,
            netns: get("CNI_NETNS").map(PathBuf::from),
            ifname,
            args,
            path,
        })
    }
}

/// What the kernel accepts as an interface name: 1-15 bytes, no '/', ':' or whitespace,
/// and not "." or "..". Returns why a name is refused.
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an interface name cannot be empty".into());
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(format!(
            "an interface name is at most {MAX_IFNAME_LEN} bytes, this one has {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err("an interface name cannot be \".\" or \"..\"".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("an interface name cannot contain {c:?}"));
    }
    Ok(())
}

fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn invalid_env(msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidEnvironment, msg, details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn args(vars: &[(&str, &str)]) -> Result<CniArgs, CniError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniArgs::from_lookup(&|k| map.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/cni-1"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=u-1;FOO=bar",
        ),
        ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
    ];

    #[test]
    fn parses_a_full_add() {
        let a = args(ADD).unwrap();
        assert_eq!(a.command, Command::Add);
        assert_eq!(a.container_id.as_deref(), Some("abc123"));
        assert_eq!(a.netns, Some(PathBuf::from("/var/run/netns/cni-1")));
        assert_eq!(a.ifname.as_deref(), Some("eth0"));
        assert_eq!(a.args.pod_namespace.as_deref(), Some("default"));
        assert_eq!(a.args.pod_name.as_deref(), Some("web-0"));
        assert_eq!(a.args.pod_infra_container_id.as_deref(), Some("abc123"));
        assert_eq!(a.args.pod_uid.as_deref(), Some("u-1"));
        assert!(a.args.ignore_unknown);
        assert_eq!(a.args.other["FOO"], "bar");
        assert_eq!(
            a.path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
    }

    #[test]
    fn required_variables_per_command() {
        let cases: &[(&str, &[&str])] = &[
            ("ADD", &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]),
            ("CHECK", &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]),
            ("DEL", &["CNI_CONTAINERID", "CNI_IFNAME"]),
            ("GC", &["CNI_PATH"]),
            ("STATUS", &[]),
            ("VERSION", &[]),
        ];
        for (cmd, required) in cases {
            let e = args(&[("CNI_COMMAND", cmd)]);
            if required.is_empty() {
                e.unwrap();
                continue;
            }
            let e = e.unwrap_err();
            assert_eq!(e.code, 4);
            for var in *required {
                assert!(e.msg.contains(var), "{cmd}: {e}");
            }
        }
        // DEL without a netns (already deleted) is fine.
        let a = args(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(a.netns, None);
    }

    #[test]
    fn empty_values_count_as_missing() {
        let mut vars = ADD.to_vec();
        vars[2] = ("CNI_NETNS", "");
        let e = args(&vars).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_NETNS"));
    }

    #[test]
    fn bad_command_is_code_4() {
        assert_eq!(args(&[]).unwrap_err().code, 4);
        let e = args(&[("CNI_COMMAND", "add")]).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_COMMAND"));
    }

    #[test]
    fn invalid_values_are_code_4_and_named() {
        let cases = [
            ("CNI_IFNAME", "averyveryverylong0"),
            ("CNI_IFNAME", "eth/0"),
            ("CNI_IFNAME", "a b"),
            ("CNI_IFNAME", ".."),
            ("CNI_CONTAINERID", "-x"),
            ("CNI_CONTAINERID", "a/b"),
            ("CNI_ARGS", "K8S_POD_NAME"),
            ("CNI_ARGS", "=v"),
        ];
        for (k, v) in cases {
            let vars: Vec<_> = ADD
                .iter()
                .map(|(kk, vv)| if *kk == k { (*kk, v) } else { (*kk, *vv) })
                .collect();
            let e = args(&vars).unwrap_err();
            assert_eq!(e.code, 4, "{k}={v}");
            assert!(e.msg.contains(k), "{k}={v}: {e}");
        }
    }

    #[test]
    fn ifname_limits() {
        validate_ifname("eth0").unwrap();
        validate_ifname("a23456789012345").unwrap();
        assert!(validate_ifname("a234567890123456").is_err());
        assert!(validate_ifname("").is_err());
        assert!(validate_ifname("a:b").is_err());
    }
}
