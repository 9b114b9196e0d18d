//! The routes background plugins serve, looked up by the HTTP layer without
//! touching Python.

use parking_lot::RwLock;

struct Route {
    template: String,
    segments: Vec<String>,
    plugin: String,
}

/// A path matched to a plugin route.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The plugin that serves the route.
    pub plugin: String,
    /// The route's template, as the plugin registered it.
    pub template: String,
    /// Values of `{name}` segments.
    pub params: Vec<(String, String)>,
}

/// Every plugin route, shared by the plugins' actors (which write it) and the HTTP layer (which reads it).
#[derive(Default)]
pub(crate) struct RouteTable {
    routes: RwLock<Vec<Route>>,
}

fn segments(path: &str) -> Vec<String> {
    path.trim_end_matches('/').split('/').map(str::to_owned).collect()
}

impl RouteTable {
    /// Replace the routes of `plugin`.
    pub fn set(&self, plugin: &str, templates: &[String]) {
        let mut routes = self.routes.write();
        routes.retain(|r| r.plugin != plugin);
        routes.extend(templates.iter().map(|t| Route { template: t.clone(), segments: segments(t), plugin: plugin.to_owned() }));
        // Literal segments win over parameters.
        routes.sort_by_key(|r| r.segments.iter().filter(|s| s.starts_with('{')).count());
    }

    /// The route `path` falls on; a literal segment wins over a `{name}` one.
    pub fn resolve(&self, path: &str) -> Option<Resolved> {
        let wanted = segments(path);
        let routes = self.routes.read();
        routes.iter().find_map(|r| {
            if r.segments.len() != wanted.len() {
                return None;
            }
            let mut params = Vec::new();
            for (pattern, got) in r.segments.iter().zip(&wanted) {
                match pattern.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    Some(name) if !got.is_empty() => params.push((name.to_owned(), got.clone())),
                    Some(_) => return None,
                    None if pattern == got => {}
                    None => return None,
                }
            }
            Some(Resolved { plugin: r.plugin.clone(), template: r.template.clone(), params })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_and_parameter_routes() {
        let t = RouteTable::default();
        t.set("teapot", &["/teapot".into(), "/teapot/{id}".into(), "/teapot/version".into()]);
        assert_eq!(t.resolve("/teapot").unwrap().template, "/teapot");
        assert_eq!(t.resolve("/teapot/version").unwrap().template, "/teapot/version");
        let r = t.resolve("/teapot/7").unwrap();
        assert_eq!((r.template.as_str(), r.params), ("/teapot/{id}", vec![("id".to_string(), "7".to_string())]));
        assert!(t.resolve("/teapot/7/8").is_none());
        t.set("teapot", &[]);
        assert!(t.resolve("/teapot").is_none());
    }
}
