//! The session cookie, the signed-in extractors and the CSRF check.
//!
//! The cookie `kie_session` holds a random token (only its digest is stored, see
//! `users`); it is `HttpOnly`, `SameSite=Lax`, limited to `/console`, and `Secure`
//! when the public URL is https. Every state-changing form carries the session's CSRF
//! token in a hidden field `csrf`, compared in constant time before anything changes.
//!
//! The sign-in form comes before any session: it carries a pre-session token as a
//! double-submit cookie. `GET /console/login` sets `kie_login` (random, `HttpOnly`,
//! `SameSite=Strict`, limited to `/console/login`, an hour) and puts the same value in
//! the form's `csrf` field; a `POST` whose field does not match its cookie is refused
//! before the address or password are looked at (no session, no failed-attempt count).
//! Another site can neither read the cookie nor send it along (`SameSite=Strict`), so it
//! cannot sign a victim into an account of its choosing.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;

use super::users::{self, Role, Session, SESSION_ABSOLUTE};
use crate::state::AppState;

pub const COOKIE: &str = "kie_session";
/// The sign-in form's pre-session CSRF cookie.
pub const LOGIN_COOKIE: &str = "kie_login";
/// How long a sign-in form's token is accepted.
pub const LOGIN_TOKEN_SECS: u64 = 3600;

/// The session token of a request's cookie, if any.
pub fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    named_cookie(headers, COOKIE)
}

/// The sign-in form's token of a request's cookie, if any.
pub fn login_cookie_token(headers: &HeaderMap) -> Option<&str> {
    named_cookie(headers, LOGIN_COOKIE)
}

fn named_cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// `Set-Cookie` for a sign-in form's token.
pub fn set_login_cookie(state: &AppState, token: &str) -> String {
    format!(
        "{LOGIN_COOKIE}={token}; Path=/console/login; HttpOnly; SameSite=Strict; Max-Age={LOGIN_TOKEN_SECS}{}",
        secure(state)
    )
}

/// Does a sign-in form's `csrf` field match its cookie (constant time)?
pub fn login_csrf_ok(headers: &HeaderMap, sent: &str) -> bool {
    match login_cookie_token(headers) {
        Some(c) => !sent.is_empty() && bool::from(sent.as_bytes().ct_eq(c.as_bytes())),
        None => false,
    }
}

fn secure(state: &AppState) -> &'static str {
    if state.config.public_url.scheme() == "https" {
        "; Secure"
    } else {
        ""
    }
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(state: &AppState, token: &str) -> String {
    format!(
        "{COOKIE}={token}; Path=/console; HttpOnly; SameSite=Lax; Max-Age={}{}",
        SESSION_ABSOLUTE.as_secs(),
        secure(state)
    )
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(state: &AppState) -> String {
    format!(
        "{COOKIE}=; Path=/console; HttpOnly; SameSite=Lax; Max-Age=0{}",
        secure(state)
    )
}

/// A request with a live session (any role). Without one: a redirect to sign-in.
pub struct SignedIn(pub Session);

/// Why a page cannot be shown.
pub enum Refusal {
    SignIn,
    Forbidden,
    Internal(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::SignIn => Redirect::to("/console/login").into_response(),
            Refusal::Forbidden => super::layout::message_page(
                StatusCode::FORBIDDEN,
                "Not allowed",
                "This page is not for your kind of console user.",
            ),
            Refusal::Internal(detail) => {
                tracing::error!(error = %detail, "console page failed");
                super::layout::message_page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Server error",
                    "Something went wrong; the server log has the details.",
                )
            }
        }
    }
}

impl From<sqlx::Error> for Refusal {
    fn from(e: sqlx::Error) -> Self {
        Refusal::Internal(e.to_string())
    }
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Refusal> {
        let token = cookie_token(&parts.headers).ok_or(Refusal::SignIn)?;
        match users::session(&state.db, token).await? {
            Some(s) => Ok(SignedIn(s)),
            None => Err(Refusal::SignIn),
        }
    }
}

/// An account holder's session, with the account it sees.
pub struct Holder {
    pub session: Session,
    pub account_id: String,
}

impl FromRequestParts<AppState> for Holder {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Refusal> {
        let SignedIn(session) = SignedIn::from_request_parts(parts, state).await?;
        match (session.user.role, session.user.account_id.clone()) {
            (Role::Account, Some(account_id)) => Ok(Holder {
                session,
                account_id,
            }),
            _ => Err(Refusal::Forbidden),
        }
    }
}

/// An operator's session.
pub struct Operator(pub Session);

impl FromRequestParts<AppState> for Operator {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Refusal> {
        let SignedIn(session) = SignedIn::from_request_parts(parts, state).await?;
        if session.user.role == Role::Operator {
            Ok(Operator(session))
        } else {
            Err(Refusal::Forbidden)
        }
    }
}

/// Checks a form's CSRF token against its session's: `None` when it matches, else the
/// refusal page to answer (nothing has changed yet).
pub fn csrf_refusal(session: &Session, sent: &str) -> Option<Response> {
    let ok: bool = sent.as_bytes().ct_eq(session.csrf.as_bytes()).into();
    if ok && !sent.is_empty() {
        None
    } else {
        tracing::warn!(user = %session.user.id, "console form refused: missing or wrong CSRF token");
        Some(super::layout::message_page(
            StatusCode::FORBIDDEN,
            "Form refused",
            "This form was not sent from your console page (missing or wrong CSRF token). Nothing was changed; reload the page and try again.",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=b; kie_session=abc123".parse().unwrap());
        assert_eq!(cookie_token(&h), Some("abc123"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "kie_session=<script>".parse().unwrap());
        assert_eq!(cookie_token(&h), None);
    }
}
