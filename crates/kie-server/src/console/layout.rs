//! The page frame (head, navigation, sign-out) and small view helpers.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::users::{Role, Session};

/// The account holder's navigation: (label, path).
pub const ACCOUNT_NAV: &[(&str, &str)] = &[
    ("Overview", "/console/overview"),
    ("API keys", "/console/keys"),
    ("Tasks", "/console/tasks"),
    ("Callbacks", "/console/callbacks"),
    ("Alerts", "/console/alerts"),
    ("Files", "/console/files"),
    ("Usage", "/console/usage"),
];

/// The operator's navigation.
pub const OPERATOR_NAV: &[(&str, &str)] = &[
    ("Accounts", "/console/admin/"),
    ("Settings", "/console/admin/settings"),
    ("Health", "/console/admin/health"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · kie console" }
            link rel="stylesheet" href="/console/static/console.css";
            script src="/console/static/console.js" defer {}
        }
    }
}

/// A page for a signed-in user: navigation for their role, the sign-out button, and
/// `body` under the heading `title`. `current` is the path of the active nav link.
pub fn page(session: &Session, current: &str, title: &str, body: Markup) -> Response {
    let nav = match session.user.role {
        Role::Account => ACCOUNT_NAV,
        Role::Operator => OPERATOR_NAV,
    };
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top {
                    span.brand { "kie console" }
                    nav aria-label="Console" {
                        ul {
                            @for (label, path) in nav {
                                li {
                                    @if *path == current {
                                        a href=(path) aria-current="page" { (label) }
                                    } @else {
                                        a href=(path) { (label) }
                                    }
                                }
                            }
                        }
                    }
                    form.signout method="post" action="/console/logout" {
                        span.who { (session.user.email) }
                        input type="hidden" name="csrf" value=(session.csrf);
                        button type="submit" { "Sign out" }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    Html(markup.into_string()).into_response()
}

/// A page without a session (sign-in, invite, errors).
pub fn bare_page(status: StatusCode, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                main.narrow {
                    p.brand { "kie console" }
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    (status, Html(markup.into_string())).into_response()
}

/// A page with one message.
pub fn message_page(status: StatusCode, title: &str, message: &str) -> Response {
    bare_page(
        status,
        title,
        html! {
            p { (message) }
            p { a href="/console/" { "Back to the console" } }
        },
    )
}

/// The hidden CSRF field of a form.
pub fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// Epoch milliseconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn time(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

pub fn opt_time(ms: Option<i64>) -> String {
    ms.map(time).unwrap_or_else(|| "—".into())
}

/// A byte count for people (1.5 MiB).
pub fn size(bytes: i64) -> String {
    let b = bytes as f64;
    if bytes < 1024 {
        format!("{bytes} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else {
        format!("{:.1} GiB", b / 1024.0 / 1024.0 / 1024.0)
    }
}

/// A notice box (success or error).
pub fn notice(kind: &str, text: &str) -> Markup {
    html! { p class=(format!("notice {kind}")) role="status" { (text) } }
}

/// A read-only value with a copy button (the script copies the element's text).
pub fn copyable(id: &str, label: &str, value: &str) -> Markup {
    html! {
        div.copyable {
            code id=(id) aria-label=(label) { (value) }
            button type="button" class="copy" data-copy=(id) { "Copy" }
        }
    }
}
