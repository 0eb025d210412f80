//! A container's environment as upstream builds it: `envFrom` (prefixed, invalid
//! names skipped), then `env` in order (`value` with `$(VAR)` expansion, `valueFrom`),
//! then the service variables of the pod's namespace (when `enableServiceLinks`) and
//! of the `kubernetes` service in `default` (always), for names not already set.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Container, Pod, Service};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Api;
use kube::api::ListParams;

use super::fieldpath::{self, PodAddresses};
use super::sources::{self, KeyedData, KeyedKind, SourceError};

/// The namespace and name of the apiserver's own service, whose variables every
/// container gets.
const MASTER_SERVICE_NAMESPACE: &str = "default";
const MASTER_SERVICE_NAME: &str = "kubernetes";

/// Name → value in definition order; redefining a name keeps its first position.
#[derive(Debug, Default, Clone)]
pub struct EnvVars {
    order: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl EnvVars {
    pub fn set(&mut self, name: String, value: String) {
        match self.index.get(&name) {
            Some(&i) => self.order[i].1 = value,
            None => {
                self.index.insert(name.clone(), self.order.len());
                self.order.push((name, value));
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.index.get(name).map(|&i| self.order[i].1.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn into_pairs(self) -> Vec<(String, String)> {
        self.order
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.order
    }
}

/// Builds the environment of `c`; an error is the message of upstream's
/// `CreateContainerConfigError`.
pub async fn container_env(
    client: &kube::Client,
    pod: &Pod,
    c: &Container,
    addr: PodAddresses<'_>,
) -> Result<EnvVars, String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let service_env = match service_env(
        client,
        &namespace,
        spec.enable_service_links.unwrap_or(true),
    )
    .await
    {
        Ok(env) => env,
        // A static pod must start while the API server is down (it may be the API
        // server): upstream's service cache is then simply empty.
        Err(e) if super::static_pods::is_static(pod) => {
            tracing::debug!(error = %e, "no service env for a static pod: services unreadable");
            BTreeMap::new()
        }
        Err(e) => {
            return Err(format!(
                "failed to list services when setting up env vars: {e}"
            ));
        }
    };
    let mut objects = Objects {
        client,
        namespace: &namespace,
        read: HashMap::new(),
    };
    let mut env = EnvVars::default();
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &from.config_map_ref {
            let optional = r.optional.unwrap_or(false);
            objects.get(KeyedKind::ConfigMap, &r.name, optional).await?
        } else if let Some(r) = &from.secret_ref {
            let optional = r.optional.unwrap_or(false);
            objects.get(KeyedKind::Secret, &r.name, optional).await?
        } else {
            None
        };
        for (key, value) in data.into_iter().flatten() {
            let name = format!("{prefix}{key}");
            // Upstream skips (and reports in an event) keys that are not env names.
            if is_env_var_name(&name) {
                env.set(name, String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    let mut allocatable: Option<BTreeMap<String, Quantity>> = None;
    for var in c.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) if !v.is_empty() => expand(v, |name| {
                env.get(name)
                    .or_else(|| service_env.get(name).map(String::as_str))
            }),
            (_, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    fieldpath::pod_field(pod, &f.field_path, addr)?
                } else if let Some(r) = &from.resource_field_ref {
                    let alloc = match &allocatable {
                        Some(a) => a,
                        None => {
                            let node = spec.node_name.clone().unwrap_or_default();
                            let a = sources::node_allocatable(client, &node)
                                .await
                                .map_err(|e| format!("reading node allocatable: {e}"))?;
                            allocatable.insert(a)
                        }
                    };
                    let target = match r.container_name.as_deref() {
                        Some(name) if !name.is_empty() && name != c.name => spec
                            .containers
                            .iter()
                            .chain(spec.init_containers.iter().flatten())
                            .find(|x| x.name == name)
                            .ok_or_else(|| format!("container {name} not found"))?,
                        _ => c,
                    };
                    fieldpath::container_resource(target, &r.resource, r.divisor.as_ref(), alloc)?
                } else if let Some((kind, name, key, optional)) = from
                    .config_map_key_ref
                    .as_ref()
                    .map(|r| (KeyedKind::ConfigMap, &r.name, &r.key, r.optional))
                    .or_else(|| {
                        from.secret_key_ref
                            .as_ref()
                            .map(|r| (KeyedKind::Secret, &r.name, &r.key, r.optional))
                    })
                {
                    let optional = optional.unwrap_or(false);
                    let Some(data) = objects.get(kind, name, optional).await? else {
                        continue;
                    };
                    match data.get(key) {
                        Some(v) => String::from_utf8_lossy(v).into_owned(),
                        None if optional => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {key} in {} {namespace}/{name}",
                                kind.name()
                            ));
                        }
                    }
                } else {
                    String::new()
                }
            }
            _ => String::new(),
        };
        env.set(var.name.clone(), value);
    }
    for (name, value) in service_env {
        if !env.contains(&name) {
            env.set(name, value);
        }
    }
    Ok(env)
}

/// ConfigMaps and Secrets read once per container start.
struct Objects<'a> {
    client: &'a kube::Client,
    namespace: &'a str,
    read: HashMap<(KeyedKind, String), KeyedData>,
}

impl Objects<'_> {
    /// `Ok(None)` for a missing object referenced as optional.
    async fn get(
        &mut self,
        kind: KeyedKind,
        name: &str,
        optional: bool,
    ) -> Result<Option<&KeyedData>, String> {
        let key = (kind, name.to_string());
        if !self.read.contains_key(&key) {
            match sources::keyed(self.client, kind, self.namespace, name).await {
                Ok(d) => {
                    self.read.insert(key.clone(), d);
                }
                Err(e) => return missing(e, optional),
            }
        }
        Ok(self.read.get(&key))
    }
}

fn missing<T>(e: SourceError, optional: bool) -> Result<Option<T>, String> {
    if optional && e.is_not_found() {
        Ok(None)
    } else {
        Err(e.to_string())
    }
}

/// Upstream's IsEnvVarName: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
pub fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '-' | '.' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// `$(NAME)` → the value `lookup` gives (unknown names stay as written), `$$` → `$`,
/// any other `$` stays, exactly as upstream's expansion package.
pub fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        if let Some(t) = tail.strip_prefix('$') {
            out.push('$');
            rest = t;
        } else if let Some(end) = tail.strip_prefix('(').and_then(|t| t.find(')')) {
            let name = &tail[1..1 + end];
            match lookup(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &tail[2 + end..];
        } else {
            out.push('$');
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// The Docker-link style variables of the services a container sees.
async fn service_env(
    client: &kube::Client,
    namespace: &str,
    links: bool,
) -> Result<BTreeMap<String, String>, kube::Error> {
    let mut services: BTreeMap<String, Service> = BTreeMap::new();
    if links {
        let api: Api<Service> = Api::namespaced(client.clone(), namespace);
        for s in api.list(&ListParams::default()).await?.items {
            services.insert(s.metadata.name.clone().unwrap_or_default(), s);
        }
    }
    let api: Api<Service> = Api::namespaced(client.clone(), MASTER_SERVICE_NAMESPACE);
    if let Some(s) = api.get_opt(MASTER_SERVICE_NAME).await? {
        // The master service wins over a same-named service of the pod's namespace.
        services.insert(MASTER_SERVICE_NAME.to_string(), s);
    }
    let mut out = BTreeMap::new();
    for s in services.values() {
        service_vars(s, &mut out);
    }
    Ok(out)
}

fn service_vars(s: &Service, out: &mut BTreeMap<String, String>) {
    let Some(spec) = &s.spec else { return };
    let ip = spec.cluster_ip.clone().unwrap_or_default();
    let ports = spec.ports.clone().unwrap_or_default();
    if ip.is_empty() || ip == "None" || ports.is_empty() {
        return;
    }
    let prefix = s
        .metadata
        .name
        .clone()
        .unwrap_or_default()
        .replace('-', "_")
        .to_uppercase();
    out.insert(format!("{prefix}_SERVICE_HOST"), ip.clone());
    out.insert(format!("{prefix}_SERVICE_PORT"), ports[0].port.to_string());
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.clone()
    };
    for (i, p) in ports.iter().enumerate() {
        if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
            out.insert(
                format!(
                    "{prefix}_SERVICE_PORT_{}",
                    name.replace('-', "_").to_uppercase()
                ),
                p.port.to_string(),
            );
        }
        let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        let url = format!("{}://{host}:{}", proto.to_lowercase(), p.port);
        if i == 0 {
            out.insert(format!("{prefix}_PORT"), url.clone());
        }
        let port_prefix = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
        out.insert(format!("{port_prefix}_PROTO"), proto.to_lowercase());
        out.insert(format!("{port_prefix}_PORT"), p.port.to_string());
        out.insert(format!("{port_prefix}_ADDR"), ip.clone());
        out.insert(port_prefix, url);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_upstream_rules() {
        let lookup = |n: &str| (n == "A").then_some("x");
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", lookup), "x-$(B)-$(A)-$");
        assert_eq!(expand("$(A", lookup), "$(A");
        assert_eq!(expand("a$b$", lookup), "a$b$");
        assert_eq!(expand("$$$(A)", lookup), "$x");
    }

    #[test]
    fn env_names_are_validated() {
        assert!(is_env_var_name("FOO_1"));
        assert!(is_env_var_name("my.var-x"));
        assert!(!is_env_var_name("1FOO"));
        assert!(!is_env_var_name("a b"));
        assert!(!is_env_var_name(""));
    }

    #[test]
    fn service_variables_match_docker_links() {
        let s: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "my-svc"},
            "spec": {"clusterIP": "10.0.0.5", "ports": [
                {"port": 80, "protocol": "TCP"},
                {"name": "dns-udp", "port": 53, "protocol": "UDP"}]}
        }))
        .unwrap();
        let mut out = BTreeMap::new();
        service_vars(&s, &mut out);
        assert_eq!(out["MY_SVC_SERVICE_HOST"], "10.0.0.5");
        assert_eq!(out["MY_SVC_SERVICE_PORT"], "80");
        assert_eq!(out["MY_SVC_SERVICE_PORT_DNS_UDP"], "53");
        assert_eq!(out["MY_SVC_PORT"], "tcp://10.0.0.5:80");
        assert_eq!(out["MY_SVC_PORT_53_UDP"], "udp://10.0.0.5:53");
        assert_eq!(out["MY_SVC_PORT_53_UDP_PROTO"], "udp");
        assert_eq!(out["MY_SVC_PORT_53_UDP_ADDR"], "10.0.0.5");
        assert_eq!(out.len(), 12);
    }
}
