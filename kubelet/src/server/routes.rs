//! The kubelet API's paths, parsed into what each handler needs.

use http::Method;

/// Where an exec or attach goes: upstream accepts the pod UID as an optional segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerTarget {
    pub namespace: String,
    pub pod: String,
    pub uid: Option<String>,
    pub container: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Pods,
    ContainerLogs {
        namespace: String,
        pod: String,
        container: String,
    },
    Exec(ContainerTarget),
    Attach(ContainerTarget),
    PortForward {
        namespace: String,
        pod: String,
        uid: Option<String>,
    },
    StatsSummary,
    MetricsResource,
    Metrics,
    MethodNotAllowed,
    NotFound,
}

impl Route {
    pub fn of(method: &Method, path: &str) -> Route {
        let segments: Vec<&str> = path
            .trim_start_matches('/')
            .trim_end_matches('/')
            .split('/')
            .collect();
        let get = method == Method::GET;
        // Streaming endpoints take GET (websockets) and POST (SPDY), as upstream.
        let stream = method == Method::GET || method == Method::POST;
        let owned = |s: &&str| s.to_string();
        let route = match segments.as_slice() {
            ["healthz", ..] => Route::Healthz,
            ["pods"] => Route::Pods,
            ["containerLogs", ns, pod, container] => {
                return guard(
                    get,
                    Route::ContainerLogs {
                        namespace: owned(ns),
                        pod: owned(pod),
                        container: owned(container),
                    },
                );
            }
            ["exec" | "attach", ns, pod, rest @ ..] if matches!(rest.len(), 1 | 2) => {
                let (uid, container) = match rest {
                    [container] => (None, container),
                    [uid, container] => (Some(uid.to_string()), container),
                    _ => return Route::NotFound,
                };
                let target = ContainerTarget {
                    namespace: owned(ns),
                    pod: owned(pod),
                    uid,
                    container: owned(container),
                };
                let route = if segments[0] == "exec" {
                    Route::Exec(target)
                } else {
                    Route::Attach(target)
                };
                return guard(stream, route);
            }
            ["portForward", ns, pod, uid @ ..] if uid.len() <= 1 => {
                return guard(
                    stream,
                    Route::PortForward {
                        namespace: owned(ns),
                        pod: owned(pod),
                        uid: uid.first().map(owned),
                    },
                );
            }
            ["stats", "summary"] => Route::StatsSummary,
            ["metrics", "resource"] => Route::MetricsResource,
            ["metrics"] => Route::Metrics,
            _ => return Route::NotFound,
        };
        guard(get, route)
    }
}

fn guard(method_ok: bool, route: Route) -> Route {
    if method_ok {
        route
    } else {
        Route::MethodNotAllowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse() {
        assert_eq!(Route::of(&Method::GET, "/healthz"), Route::Healthz);
        assert_eq!(Route::of(&Method::GET, "/pods/"), Route::Pods);
        assert_eq!(Route::of(&Method::POST, "/pods"), Route::MethodNotAllowed);
        assert_eq!(
            Route::of(&Method::GET, "/containerLogs/ns/p/c"),
            Route::ContainerLogs {
                namespace: "ns".into(),
                pod: "p".into(),
                container: "c".into()
            }
        );
        assert_eq!(
            Route::of(&Method::POST, "/exec/ns/p/uid1/c"),
            Route::Exec(ContainerTarget {
                namespace: "ns".into(),
                pod: "p".into(),
                uid: Some("uid1".into()),
                container: "c".into()
            })
        );
        assert!(matches!(
            Route::of(&Method::GET, "/attach/ns/p/c"),
            Route::Attach(_)
        ));
        assert_eq!(
            Route::of(&Method::POST, "/portForward/ns/p"),
            Route::PortForward {
                namespace: "ns".into(),
                pod: "p".into(),
                uid: None
            }
        );
        assert_eq!(Route::of(&Method::GET, "/exec/ns/p"), Route::NotFound);
        assert_eq!(
            Route::of(&Method::GET, "/stats/summary"),
            Route::StatsSummary
        );
        assert_eq!(
            Route::of(&Method::GET, "/metrics/resource"),
            Route::MetricsResource
        );
        assert_eq!(Route::of(&Method::GET, "/nope"), Route::NotFound);
    }
}
