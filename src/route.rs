//! Route patterns shared by all layers: `"POST /login"`, `"GET /products/{id}"`,
//! `"/admin/*"`.
//!
//! A pattern is an optional method list and a path:
//! - methods: `GET`, `POST`, ... or several joined by `,` or `|` (`"GET,HEAD /x"`); no
//!   method, `*` or `ANY` matches every method. A `GET` pattern also matches `HEAD`
//!   (routers answer `HEAD` with the `GET` handler, so a policy on `GET` must cover it).
//! - path: literal segments, `{name}` parameters, and a trailing `*` (or `{*name}`)
//!   matching everything below. `/admin/*` also matches `/admin` and `/admin/`.
//!
//! Matching uses [`matchit`] (a radix tree): one lookup per request whatever the number of
//! patterns. The most specific path wins (literal, then parameter, then wildcard); among
//! patterns for the same path, a method-specific one wins over an any-method one. Paths are
//! matched as the router sees them (the raw path, not percent-decoded). Invalid or
//! conflicting patterns are [`ConfigError::Route`] errors.
//!
//! ```
//! use http::Method;
//! use tower_shield::RouteSet;
//!
//! let routes = RouteSet::builder()
//!     .route("POST /login", "strict").unwrap()
//!     .route("GET /products/{id}", "read").unwrap()
//!     .route("/admin/*", "admin").unwrap()
//!     .build();
//! let m = routes.at(&Method::GET, "/products/42").unwrap();
//! assert_eq!((*m.value, m.template), ("read", "/products/{id}"));
//! assert_eq!(*routes.at(&Method::HEAD, "/products/42").unwrap().value, "read");
//! assert_eq!(*routes.at(&Method::DELETE, "/admin").unwrap().value, "admin");
//! assert!(routes.at(&Method::GET, "/login").is_none());
//! ```

use std::sync::Arc;

use http::Method;

use crate::error::ConfigError;

/// The route a request matched, inserted into the request extensions by the shield so that
/// audit and metrics record the template (`/products/{id}`), not only the raw path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedRoute {
    /// The full pattern as configured (`"GET /products/{id}"`).
    pub pattern: Arc<str>,
    /// The path template (`"/products/{id}"`).
    pub template: Arc<str>,
}

/// A parsed method filter: a bit set of standard methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MethodSet(u16);

const METHODS: [(&str, u16); 9] = [
    ("GET", 1),
    ("HEAD", 2),
    ("POST", 4),
    ("PUT", 8),
    ("DELETE", 16),
    ("PATCH", 32),
    ("OPTIONS", 64),
    ("CONNECT", 128),
    ("TRACE", 256),
];

fn method_bit(m: &Method) -> u16 {
    match *m {
        Method::GET => 1,
        Method::HEAD => 2,
        Method::POST => 4,
        Method::PUT => 8,
        Method::DELETE => 16,
        Method::PATCH => 32,
        Method::OPTIONS => 64,
        Method::CONNECT => 128,
        Method::TRACE => 256,
        _ => 0,
    }
}

/// A parsed route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    methods: Option<MethodSet>,
    template: String,
    pattern: String,
}

impl RoutePattern {
    /// Parses a pattern; `key` names where it came from in errors.
    pub fn parse(pattern: &str, key: &str) -> Result<Self, ConfigError> {
        let err = |reason: &str| ConfigError::Route {
            key: key.to_owned(),
            pattern: pattern.chars().take(200).collect(),
            reason: reason.to_owned(),
        };
        let trimmed = pattern.trim();
        let (methods, path) = match trimmed.split_once(char::is_whitespace) {
            Some((m, p)) => (Some(m), p.trim()),
            None if trimmed.starts_with('/') => (None, trimmed),
            None => return Err(err("expected \"[METHOD] /path\"")),
        };
        let methods = match methods {
            None | Some("*") => None,
            Some(m) if m.eq_ignore_ascii_case("ANY") => None,
            Some(list) => {
                let mut bits = 0;
                for m in list.split([',', '|']) {
                    let m = m.trim().to_ascii_uppercase();
                    let Some((_, bit)) = METHODS.iter().find(|(n, _)| *n == m) else {
                        return Err(err(
                            "unknown method (use GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, CONNECT, TRACE, or * for any)",
                        ));
                    };
                    bits |= bit;
                }
                if bits & 1 != 0 {
                    bits |= 2; // GET covers HEAD
                }
                Some(MethodSet(bits))
            }
        };
        if !path.starts_with('/') {
            return Err(err("the path must start with '/'"));
        }
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err(
                "the path must not contain spaces or control characters",
            ));
        }
        if let Some(pos) = path.find('*') {
            let tail_ok = path.ends_with("/*") && pos == path.len() - 1;
            let named_ok =
                path[..pos].ends_with("/{") && path.ends_with('}') && !path[pos..].contains('/');
            if !(tail_ok || named_ok) {
                return Err(err(
                    "'*' is only allowed as the last segment (\"/admin/*\" or \"/files/{*rest}\")",
                ));
            }
        }
        Ok(Self {
            methods,
            template: path.to_owned(),
            pattern: trimmed.to_owned(),
        })
    }

    /// The path template.
    pub fn template(&self) -> &str {
        &self.template
    }

    /// Whether the pattern matches this method.
    pub fn matches_method(&self, method: &Method) -> bool {
        self.methods.is_none_or(|m| m.0 & method_bit(method) != 0)
    }

    /// The paths to insert into the radix tree, and whether each is implicit.
    fn tree_paths(&self) -> Vec<(String, bool)> {
        let t = &self.template;
        if let Some(base) = t.strip_suffix("/*") {
            let mut v = vec![(format!("{base}/{{*rest}}"), false)];
            v.push((format!("{base}/"), true));
            if !base.is_empty() {
                v.push((base.to_owned(), true));
            }
            v
        } else if let Some(idx) = t.find("/{*") {
            let base = &t[..idx];
            let mut v = vec![(t.clone(), false), (format!("{base}/"), true)];
            if !base.is_empty() {
                v.push((base.to_owned(), true));
            }
            v
        } else {
            vec![(t.clone(), false)]
        }
    }
}

struct Entry {
    methods: Option<MethodSet>,
    implicit: bool,
    value: usize,
}

struct RouteValue<T> {
    value: T,
    pattern: Arc<str>,
    template: Arc<str>,
}

/// A set of route patterns mapped to values, matched in one radix-tree lookup.
pub struct RouteSet<T> {
    /// Literal and parameter paths (conflicts here are configuration errors).
    router: matchit::Router<usize>,
    /// Catch-all paths, spread over as many trees as needed: matchit refuses a catch-all
    /// beside a parameter at the same position (`/products/{*rest}` with `/products/{id}`),
    /// which route policies need.
    wildcards: Vec<matchit::Router<usize>>,
    nodes: Vec<Vec<Entry>>,
    values: Vec<RouteValue<T>>,
    /// Set for small sets whose catch-alls all have a literal base: answers most lookups
    /// with a few comparisons instead of two radix-tree walks.
    quick: Option<Quick>,
}

/// The lookup of a small route set without the radix trees, for the paths no literal or
/// parameter pattern can match (checked first: such a path would win over a catch-all).
#[derive(Debug)]
struct Quick {
    /// Paths of the literal tree without a parameter: a request path matches one only if
    /// it is equal to it.
    exact: Vec<Box<str>>,
    /// The text before the first `{` of the other paths of the literal tree: a request path
    /// matches one only if it starts with it.
    prefixes: Vec<Box<str>>,
    /// The catch-alls (`base/{*rest}`), as `base/` and the node, the longest base first:
    /// a request path longer than `base/` and starting with it matches the first such one,
    /// as it does in the single catch-all tree.
    bases: Vec<(Box<str>, usize)>,
}

impl Quick {
    /// Most paths of the literal tree checked one by one before taking the radix tree.
    const MAX_LITERAL: usize = 16;
    /// Most catch-all bases checked one by one.
    const MAX_BASES: usize = 8;

    /// `Some(node)` or `Some(None)` when the answer is known without the trees.
    #[inline]
    fn find(&self, path: &str) -> Option<Option<usize>> {
        if self.exact.iter().any(|e| **e == *path)
            || self.prefixes.iter().any(|p| path.starts_with(&**p))
        {
            return None;
        }
        Some(
            self.bases
                .iter()
                .find(|(b, _)| path.len() > b.len() && path.starts_with(&**b))
                .map(|(_, n)| *n),
        )
    }
}

impl<T> std::fmt::Debug for RouteSet<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.values.iter().map(|v| &*v.pattern))
            .finish()
    }
}

/// The result of a route lookup.
#[derive(Debug)]
pub struct RouteMatch<'a, T> {
    /// The value configured for the pattern.
    pub value: &'a T,
    /// The full pattern (`"GET /products/{id}"`).
    pub pattern: &'a Arc<str>,
    /// The path template (`"/products/{id}"`).
    pub template: &'a str,
}

impl<T> RouteSet<T> {
    /// Starts a builder.
    pub fn builder() -> RouteSetBuilder<T> {
        RouteSetBuilder {
            routes: Vec::new(),
            key: "routes".into(),
        }
    }

    /// Whether the set holds no pattern.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The value of a node for a method: entries are sorted, explicit before implicit,
    /// method-specific before any-method.
    #[inline]
    fn pick(&self, node: usize, bit: u16) -> Option<&RouteValue<T>> {
        self.nodes[node]
            .iter()
            .find(|e| e.methods.is_none_or(|m| m.0 & bit != 0))
            .map(|e| &self.values[e.value])
    }

    fn find(&self, method: &Method, path: &str) -> Option<&RouteValue<T>> {
        let bit = method_bit(method);
        if let Some(q) = &self.quick
            && let Some(node) = q.find(path)
        {
            return node.and_then(|n| self.pick(n, bit));
        }
        self.find_in_trees(bit, path)
    }

    /// The lookup in the radix trees.
    fn find_in_trees(&self, bit: u16, path: &str) -> Option<&RouteValue<T>> {
        let pick = |node: &usize| self.pick(*node, bit);
        if let Some(v) = self.router.at(path).ok().and_then(|m| pick(m.value)) {
            return Some(v);
        }
        // the most specific (longest) catch-all wins; usually there is a single tree
        if let [only] = self.wildcards.as_slice() {
            return only.at(path).ok().and_then(|m| pick(m.value));
        }
        self.wildcards
            .iter()
            .filter_map(|r| r.at(path).ok().and_then(|m| pick(m.value)))
            .max_by_key(|v| v.template.len())
    }

    /// Finds the pattern matching a request.
    pub fn at(&self, method: &Method, path: &str) -> Option<RouteMatch<'_, T>> {
        self.find(method, path).map(|v| RouteMatch {
            value: &v.value,
            pattern: &v.pattern,
            template: &v.template,
        })
    }

    /// Like [`at`](Self::at), returning a [`MatchedRoute`] for the request extensions.
    pub fn matched_route(&self, method: &Method, path: &str) -> Option<MatchedRoute> {
        self.find(method, path).map(|v| MatchedRoute {
            pattern: v.pattern.clone(),
            template: v.template.clone(),
        })
    }

    /// Iterates over `(pattern, value)` pairs in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.values.iter().map(|v| (&*v.pattern, &v.value))
    }
}

/// Builder for [`RouteSet`].
pub struct RouteSetBuilder<T> {
    routes: Vec<(RoutePattern, T)>,
    key: String,
}

impl<T> RouteSetBuilder<T> {
    /// Sets the name used for this set in error messages (e.g. a config key).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// Adds a pattern (parsed now; errors name the pattern).
    pub fn route(mut self, pattern: &str, value: T) -> Result<Self, ConfigError> {
        let key = format!("{}[{}]", self.key, self.routes.len());
        self.routes
            .push((RoutePattern::parse(pattern, &key)?, value));
        Ok(self)
    }

    /// Adds an already parsed pattern.
    pub fn pattern(mut self, pattern: RoutePattern, value: T) -> Self {
        self.routes.push((pattern, value));
        self
    }

    /// Builds the set. Fails on conflicting patterns (e.g. `/a/{x}` and `/a/{y}`) or the
    /// same pattern twice.
    pub fn try_build(self) -> Result<RouteSet<T>, ConfigError> {
        let mut router = matchit::Router::new();
        let mut wildcards: Vec<matchit::Router<usize>> = Vec::new();
        let mut node_of_path: std::collections::HashMap<String, usize> = Default::default();
        let mut nodes: Vec<Vec<Entry>> = Vec::new();
        let mut values = Vec::with_capacity(self.routes.len());
        for (i, (p, value)) in self.routes.into_iter().enumerate() {
            let key = format!("{}[{i}]", self.key);
            for (path, implicit) in p.tree_paths() {
                let node = match node_of_path.get(&path) {
                    Some(n) => *n,
                    None => {
                        let n = nodes.len();
                        let err = |e: matchit::InsertError| ConfigError::Route {
                            key: key.clone(),
                            pattern: p.pattern.clone(),
                            reason: e.to_string(),
                        };
                        if path.contains("{*") {
                            if !wildcards
                                .iter_mut()
                                .any(|r| r.insert(path.clone(), n).is_ok())
                            {
                                let mut r = matchit::Router::new();
                                r.insert(path.clone(), n).map_err(err)?;
                                wildcards.push(r);
                            }
                        } else {
                            router.insert(path.clone(), n).map_err(err)?;
                        }
                        nodes.push(Vec::new());
                        node_of_path.insert(path, n);
                        n
                    }
                };
                let overlap = nodes[node].iter().any(|e| {
                    !e.implicit
                        && !implicit
                        && match (e.methods, p.methods) {
                            (None, None) => true,
                            (Some(a), Some(b)) => a.0 & b.0 & !2 != 0 || (a.0 & b.0 == 2),
                            _ => false,
                        }
                });
                if overlap {
                    return Err(ConfigError::Route {
                        key,
                        pattern: p.pattern.clone(),
                        reason: "the same method and path are already configured".into(),
                    });
                }
                nodes[node].push(Entry {
                    methods: p.methods,
                    implicit,
                    value: i,
                });
            }
            values.push(RouteValue {
                value,
                pattern: Arc::from(p.pattern.as_str()),
                template: Arc::from(p.template.as_str()),
            });
        }
        for entries in &mut nodes {
            entries.sort_by_key(|e| (e.implicit, e.methods.is_none()));
        }
        let quick = quick_lookup(&node_of_path, wildcards.len());
        Ok(RouteSet {
            router,
            wildcards,
            nodes,
            values,
            quick,
        })
    }

    /// Builds the set, panicking on conflicts. Prefer [`try_build`](Self::try_build) for
    /// patterns that come from configuration.
    pub fn build(self) -> RouteSet<T> {
        match self.try_build() {
            Ok(set) => set,
            Err(e) => panic!("{e}"),
        }
    }
}

/// The [`Quick`] lookup of a set, when it is small and at most one catch-all tree holds
/// only catch-alls with a literal base.
fn quick_lookup(
    node_of_path: &std::collections::HashMap<String, usize>,
    wildcard_trees: usize,
) -> Option<Quick> {
    if wildcard_trees > 1 {
        return None;
    }
    let mut q = Quick {
        exact: Vec::new(),
        prefixes: Vec::new(),
        bases: Vec::new(),
    };
    for (path, &node) in node_of_path {
        if let Some(idx) = path.find("{*") {
            let base = &path[..idx];
            if base.contains(['{', '}']) || !path.ends_with('}') {
                return None;
            }
            q.bases.push((base.into(), node));
        } else {
            match path.find(['{', '}']) {
                None => q.exact.push(path.as_str().into()),
                Some(i) => q.prefixes.push(path[..i].into()),
            }
        }
    }
    if q.exact.len() + q.prefixes.len() > Quick::MAX_LITERAL || q.bases.len() > Quick::MAX_BASES {
        return None;
    }
    q.bases.sort_by_key(|b| std::cmp::Reverse(b.0.len()));
    Some(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(patterns: &[&str]) -> RouteSet<usize> {
        let mut b = RouteSet::builder();
        for (i, p) in patterns.iter().enumerate() {
            b = b.route(p, i).unwrap();
        }
        b.try_build().unwrap()
    }

    fn at(s: &RouteSet<usize>, m: Method, p: &str) -> Option<usize> {
        s.at(&m, p).map(|m| *m.value)
    }

    #[test]
    fn most_specific_path_and_method_win() {
        let s = set(&[
            "/products/*",
            "GET /products/{id}",
            "/products/{id}",
            "POST /products/search",
            "*  /",
        ]);
        assert_eq!(at(&s, Method::GET, "/products/7"), Some(1));
        assert_eq!(at(&s, Method::PUT, "/products/7"), Some(2));
        assert_eq!(at(&s, Method::POST, "/products/search"), Some(3));
        // like the router (matchit), a literal segment beats a parameter even when its
        // methods differ; the request then falls back to the catch-all policy
        assert_eq!(at(&s, Method::GET, "/products/search"), Some(0));
        assert_eq!(at(&s, Method::GET, "/products/7/reviews"), Some(0));
        assert_eq!(at(&s, Method::GET, "/products"), Some(0));
        assert_eq!(at(&s, Method::GET, "/"), Some(4));
        assert_eq!(at(&s, Method::GET, "/other"), None);
    }

    #[test]
    fn wildcard_covers_base_but_explicit_base_wins() {
        let s = set(&["/admin/*", "GET /admin"]);
        assert_eq!(at(&s, Method::GET, "/admin"), Some(1));
        assert_eq!(at(&s, Method::POST, "/admin"), Some(0));
        assert_eq!(at(&s, Method::POST, "/admin/"), Some(0));
        assert_eq!(at(&s, Method::POST, "/admin/x/y"), Some(0));
        assert_eq!(at(&s, Method::POST, "/administrator"), None);
        let all = set(&["/*"]);
        assert_eq!(at(&all, Method::GET, "/"), Some(0));
        assert_eq!(at(&all, Method::GET, "/a/b"), Some(0));
    }

    #[test]
    fn method_lists_and_head() {
        let s = set(&["GET,POST /a", "put|delete /b"]);
        assert_eq!(at(&s, Method::HEAD, "/a"), Some(0));
        assert_eq!(at(&s, Method::POST, "/a"), Some(0));
        assert_eq!(at(&s, Method::PATCH, "/a"), None);
        assert_eq!(at(&s, Method::DELETE, "/b"), Some(1));
        let s = set(&["HEAD /h", "GET /g"]);
        assert_eq!(at(&s, Method::GET, "/h"), None);
        assert_eq!(at(&s, Method::HEAD, "/g"), Some(1));
    }

    #[test]
    fn quick_lookup_answers_like_the_radix_trees() {
        let pool = [
            "/products/*",
            "GET /products/{id}",
            "POST /products/search",
            "/admin/*",
            "GET /admin",
            "/admin/users/*",
            "/files/{*rest}",
            "DELETE /a/b",
            "GET,POST /a",
            "/a/*",
            "/*",
            "GET /orders/{id}/items",
            "/orders",
            "PUT /x/{y}",
            "/x/{y}/*",
            "/login",
            "GET /{{raw}}/*",
        ];
        let paths = [
            "/",
            "",
            "/products",
            "/products/",
            "/products/1",
            "/products/1/2",
            "/products/search",
            "/productsx",
            "/admin",
            "/admin/",
            "/admin/x",
            "/admin/users",
            "/admin/users/",
            "/admin/users/7",
            "/administrator",
            "/files",
            "/files/",
            "/files/a/b",
            "/a",
            "/a/",
            "/a/b",
            "/a/b/c",
            "/ab",
            "/orders",
            "/orders/",
            "/orders/5/items",
            "/orders/5",
            "/x/1",
            "/x/1/z",
            "/login",
            "/l",
            "/{raw}/x",
            "//",
            "/products//x",
        ];
        let methods = [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::DELETE,
            Method::PUT,
        ];
        let mut quick_sets = 0;
        // every subset of the pool's first patterns, and sliding windows over the rest
        let subsets = (0u32..1 << 10)
            .map(|m| {
                (0..10)
                    .filter(|i| m & (1 << i) != 0)
                    .collect::<Vec<usize>>()
            })
            .chain((0..pool.len()).map(|i| (i..pool.len().min(i + 6)).collect()));
        for subset in subsets {
            let mut b = RouteSet::builder();
            for &i in &subset {
                b = b.route(pool[i], i).unwrap();
            }
            let Ok(s) = b.try_build() else { continue };
            quick_sets += usize::from(s.quick.is_some());
            for p in paths {
                for m in &methods {
                    let bit = method_bit(m);
                    let quick = s.find(m, p).map(|v| v.value);
                    let trees = s.find_in_trees(bit, p).map(|v| v.value);
                    assert_eq!(quick, trees, "{subset:?} {m} {p}");
                }
            }
        }
        assert!(quick_sets > 500, "{quick_sets}");
        // too many literal paths: the trees
        let mut b = RouteSet::builder();
        for i in 0..20 {
            b = b.route(&format!("/p{i}"), i).unwrap();
        }
        let s = b.build();
        assert!(s.quick.is_none());
        assert_eq!(s.at(&Method::GET, "/p7").map(|m| *m.value), Some(7));
    }

    #[test]
    fn matched_route_carries_template() {
        let s = set(&["GET /products/{id}"]);
        let m = s.matched_route(&Method::GET, "/products/1").unwrap();
        assert_eq!(&*m.template, "/products/{id}");
        assert_eq!(&*m.pattern, "GET /products/{id}");
    }

    #[test]
    fn invalid_patterns_are_config_errors() {
        for bad in [
            "GET products",
            "FETCH /x",
            "",
            "GET /a/*/b",
            "GET /a b",
            "/a/{",
            "/a/{x}{y}",
            "/a*",
        ] {
            let r = RouteSet::<()>::builder()
                .route(bad, ())
                .and_then(|b| b.try_build());
            assert!(
                matches!(r, Err(ConfigError::Route { .. })),
                "{bad:?} -> {r:?}"
            );
        }
        for conflict in [
            &["/a/{x}", "/a/{y}"][..],
            &["GET /a", "GET /a"],
            &["GET /a", "GET,POST /a"],
            &["/a", "*  /a"],
        ] {
            let mut b = RouteSet::builder();
            for p in conflict {
                b = b.route(p, ()).unwrap();
            }
            assert!(
                matches!(b.try_build(), Err(ConfigError::Route { .. })),
                "{conflict:?}"
            );
        }
        // different methods on one path are fine
        let _ = set(&["GET /a", "POST /a", "/a"]);
    }
}
