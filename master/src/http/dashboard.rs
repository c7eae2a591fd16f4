//! The dashboard's files, embedded in the binary (no CDN, no file to install): `GET /` is
//! `dashboard/index.html`, `GET /static/NAME` the other files of `dashboard/`.

/// A file of the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asset {
    Index,
    Script,
    Style,
}

impl Asset {
    /// The asset at `/static/NAME`.
    pub fn named(name: &str) -> Option<Asset> {
        match name {
            "app.js" => Some(Asset::Script),
            "style.css" => Some(Asset::Style),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Asset::Index => "text/html; charset=utf-8",
            Asset::Script => "text/javascript; charset=utf-8",
            Asset::Style => "text/css; charset=utf-8",
        }
    }

    pub fn body(self) -> &'static str {
        match self {
            Asset::Index => include_str!("dashboard/index.html"),
            Asset::Script => include_str!("dashboard/app.js"),
            Asset::Style => include_str!("dashboard/style.css"),
        }
    }
}
