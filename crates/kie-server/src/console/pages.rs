//! Sign-in, invites, sign-out and the account holder's pages.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use kie_wire::Credits;
use maud::{html, Markup};
use serde::Deserialize;

use super::chart::{self, Day};
use super::layout::{
    self, bare_page, copyable, csrf_field, message_page, notice, opt_time, page, size, time,
};
use super::session::{self, csrf_refusal, Holder, Refusal, SignedIn};
use super::users::{self, Role, SignIn};
use crate::state::AppState;
use crate::store::now_ms;
use crate::{accounts, files, ledger, tasks, webhooks};

type PageResult = Result<Response, Refusal>;

const DAY_MS: i64 = 86_400_000;
/// Rows per page of the task log, files and usage.
const PAGE: i64 = 50;

fn internal(e: impl std::fmt::Display) -> Refusal {
    Refusal::Internal(e.to_string())
}

/// `/console/`: the signed-in user's home, else sign-in.
pub async fn root(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let home = match session::cookie_token(&headers) {
        Some(t) => match users::session(&state.db, t).await {
            Ok(Some(s)) if s.user.role == Role::Operator => "/console/admin/",
            Ok(Some(_)) => "/console/overview",
            _ => "/console/login",
        },
        None => "/console/login",
    };
    Redirect::to(home).into_response()
}

pub async fn not_found() -> Response {
    message_page(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such console page.",
    )
}

/// The sign-in page; with `csrf` its pre-session token (in the form and, when `set`,
/// in a new `kie_login` cookie).
fn login_page(
    state: &AppState,
    status: StatusCode,
    email: &str,
    error: Option<&str>,
    csrf: &str,
    set: bool,
) -> Response {
    let mut r = bare_page(
        status,
        "Sign in",
        html! {
            @if let Some(e) = error { (notice("error", e)) }
            form method="post" action="/console/login" {
                input type="hidden" name="csrf" value=(csrf);
                label for="email" { "Email" }
                input id="email" name="email" type="email" autocomplete="username" required value=(email);
                label for="password" { "Password" }
                input id="password" name="password" type="password" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
        },
    );
    if set {
        if let Ok(v) = session::set_login_cookie(state, csrf).parse() {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    r
}

/// The sign-in form with its pre-session token: the one of the browser's `kie_login`
/// cookie (so two open sign-in tabs both work), else a new one; the cookie is renewed.
pub async fn login_form(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let token = session::login_cookie_token(&headers)
        .map(str::to_string)
        .unwrap_or_else(users::new_token);
    login_page(&state, StatusCode::OK, "", None, &token, true)
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> PageResult {
    if !session::login_csrf_ok(&headers, &f.csrf) {
        // nothing is looked up or counted: a fresh form to try again
        tracing::warn!("console sign-in refused: missing or wrong CSRF token");
        return Ok(login_page(
            &state,
            StatusCode::FORBIDDEN,
            &f.email,
            Some("This sign-in form has expired or was not sent from this site; nothing was checked. Please sign in again."),
            &users::new_token(),
            true,
        ));
    }
    let again =
        |status, error: &str| login_page(&state, status, &f.email, Some(error), &f.csrf, false);
    if f.password.len() > users::MAX_PASSWORD {
        return Ok(again(StatusCode::UNAUTHORIZED, "Wrong email or password."));
    }
    match users::sign_in(&state.db, &f.email, &f.password).await? {
        SignIn::Ok(user) => {
            let token = users::create_session(&state.db, &user).await?;
            tracing::info!(user = %user.id, role = user.role.as_str(), "console sign-in");
            let home = if user.role == Role::Operator {
                "/console/admin/"
            } else {
                "/console/overview"
            };
            Ok(signed_in_redirect(&state, &token, home))
        }
        SignIn::Wrong => Ok(again(StatusCode::UNAUTHORIZED, "Wrong email or password.")),
        SignIn::Locked(secs) => {
            let mut r = again(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "Too many failed sign-ins for this address: try again in {} minutes.",
                    secs.div_ceil(60)
                ),
            );
            if let Ok(v) = secs.to_string().parse() {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            Ok(r)
        }
    }
}

fn signed_in_redirect(state: &AppState, token: &str, to: &str) -> Response {
    let mut r = Redirect::to(to).into_response();
    if let Ok(v) = session::set_cookie(state, token).parse() {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(
    State(state): State<AppState>,
    SignedIn(s): SignedIn,
    Form(f): Form<CsrfOnly>,
) -> PageResult {
    if let Some(r) = csrf_refusal(&s, &f.csrf) {
        return Ok(r);
    }
    users::end_session(&state.db, &s.token_digest).await?;
    let mut r = Redirect::to("/console/login").into_response();
    if let Ok(v) = session::clear_cookie(&state).parse() {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

fn invite_page(status: StatusCode, token: &str, email: &str, error: Option<&str>) -> Response {
    bare_page(
        status,
        "Set your password",
        html! {
            p { "Choose a password for " strong { (email) } " (at least " (users::MIN_PASSWORD) " characters)." }
            @if let Some(e) = error { (notice("error", e)) }
            form method="post" action=(format!("/console/invite/{token}")) {
                label for="password" { "Password" }
                input id="password" name="password" type="password" autocomplete="new-password" required minlength=(users::MIN_PASSWORD);
                label for="confirm" { "Confirm password" }
                input id="confirm" name="confirm" type="password" autocomplete="new-password" required minlength=(users::MIN_PASSWORD);
                button type="submit" { "Set password" }
            }
        },
    )
}

fn invite_gone() -> Response {
    message_page(
        StatusCode::NOT_FOUND,
        "Invite not valid",
        "This invite link was already used or has expired. Ask your operator for a new one.",
    )
}

fn plausible_token(t: &str) -> bool {
    t.len() == 32 && t.bytes().all(|b| b.is_ascii_alphanumeric())
}

pub async fn invite_form(State(state): State<AppState>, Path(token): Path<String>) -> PageResult {
    if !plausible_token(&token) {
        return Ok(invite_gone());
    }
    Ok(match users::invite_user(&state.db, &token).await? {
        Some(u) => invite_page(StatusCode::OK, &token, &u.email, None),
        None => invite_gone(),
    })
}

#[derive(Deserialize)]
pub struct NewPassword {
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
}

/// Sets the password of an invite and signs the person in. The invite's unguessable
/// token is what authorises this form (it is the CSRF token too).
pub async fn invite_accept(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Form(f): Form<NewPassword>,
) -> PageResult {
    if !plausible_token(&token) {
        return Ok(invite_gone());
    }
    let Some(user) = users::invite_user(&state.db, &token).await? else {
        return Ok(invite_gone());
    };
    if let Err(why) = users::check_new_password(&f.password, &f.confirm) {
        return Ok(invite_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            &token,
            &user.email,
            Some(&why),
        ));
    }
    let hash = users::hash_password(f.password).await.map_err(internal)?;
    let Some(user) = users::redeem_invite(&state.db, &token, &hash).await? else {
        return Ok(invite_gone());
    };
    let session = users::create_session(&state.db, &user).await?;
    tracing::info!(user = %user.id, role = user.role.as_str(), "console invite used, password set");
    let home = if user.role == Role::Operator {
        "/console/admin/"
    } else {
        "/console/overview"
    };
    Ok(signed_in_redirect(&state, &session, home))
}

fn duration_words(secs: f64) -> String {
    let s = secs.max(0.0);
    if s < 3600.0 {
        format!("{} minutes", (s / 60.0).ceil() as i64)
    } else if s < 2.0 * 86400.0 {
        format!("{:.1} hours", s / 3600.0)
    } else {
        format!("{:.1} days", s / 86400.0)
    }
}

fn task_rows(ts: &[tasks::Task]) -> Markup {
    html! {
        table.list {
            thead { tr {
                th scope="col" { "Task" } th scope="col" { "Model" } th scope="col" { "State" }
                th scope="col" { "Created" } th scope="col" class="num" { "Credits" }
            } }
            tbody {
                @for t in ts {
                    tr {
                        td { a href=(format!("/console/tasks/{}", t.id)) { code { (t.id) } } }
                        td { (t.model) }
                        td { span class=(format!("state {}", t.state)) { (t.state) } }
                        td { (time(t.created_at)) }
                        td.num { (if t.is_finished() { Credits(t.consume_credits) } else { Credits(t.price) }) }
                    }
                }
                @if ts.is_empty() { tr { td colspan="5" { "No tasks yet." } } }
            }
        }
    }
}

pub async fn overview(State(state): State<AppState>, h: Holder) -> PageResult {
    let acc = &h.account_id;
    let account = accounts::get(&state.db, acc).await.map_err(internal)?;
    let bal = ledger::balance(&state.db, acc)
        .await?
        .ok_or_else(|| internal("account vanished"))?;
    let now = now_ms();
    let today = now.div_euclid(DAY_MS);
    let first = today - 29;
    let per_day = ledger::spent_per_day(&state.db, acc, first, today, now).await?;
    let days: Vec<Day> = (first..=today)
        .zip(per_day)
        .map(|(d, spent)| Day {
            date: time(d * DAY_MS)[..10].to_string(),
            spent: Credits(spent),
        })
        .collect();
    let window = 86_400.0;
    let spent_24h = ledger::spent_since(&state.db, acc, now - DAY_MS).await?;
    let (per_hour, eta) = ledger::burn(spent_24h, window, bal.available());
    let latest = tasks::log(&state.db, acc, &Default::default(), None, 10).await?;
    let body = html! {
        section.cards {
            div.card {
                h2 id="available-label" { "Available credits" }
                p.big id="available" aria-labelledby="available-label" { (bal.available()) }
            }
            div.card {
                h2 id="held-label" { "Held credits" }
                p.big id="held" aria-labelledby="held-label" { (bal.held) }
                p.hint { "reserved by running tasks" }
            }
            div.card {
                h2 { "Burn rate" }
                p.big id="burn" { (format!("{per_hour:.2}")) " / hour" }
                p.hint { "over the last 24 hours" }
            }
            div.card {
                h2 { "Projected exhaustion" }
                p.big id="eta" {
                    @match eta {
                        Some(s) => { "in " (duration_words(s)) }
                        None => { "not at this rate" }
                    }
                }
            }
        }
        p.hint { "Account " strong { (account.name) } " (" code { (account.id) } ")" }
        h2 { "Credits spent per day" }
        (chart::spent_per_day(&days))
        h2 { "Latest tasks" }
        (task_rows(&latest))
        p { a href="/console/tasks" { "All tasks" } }
    };
    Ok(page(&h.session, "/console/overview", "Overview", body))
}

// ---- API keys -----------------------------------------------------------------------

/// `used / cap` (or `used (no cap)`) of one cap.
fn cap_usage(used: Credits, cap: Option<Credits>) -> String {
    match cap {
        Some(c) => format!("{used} / {c}"),
        None => format!("{used} (no cap)"),
    }
}

/// A cap as a form value (empty: no cap).
fn cap_value(cap: Option<Credits>) -> String {
    cap.map(|c| c.to_string()).unwrap_or_default()
}

fn keys_page(
    h: &Holder,
    keys: &[accounts::KeyInfo],
    created: Option<&accounts::NewKey>,
    ask: Option<&str>,
    error: Option<&str>,
) -> Response {
    let body = html! {
        @if let Some(e) = error { (notice("error", e)) }
        @if let Some(k) = created {
            div.notice.success role="status" {
                p {
                    "New key " strong { (k.prefix) } " — copy it now: it is not shown again."
                    @if k.manage { " It has the management scope: it can create, revoke and change keys." }
                }
                (copyable("new-key", "New API key", &k.key))
            }
        }
        form.inline method="post" action="/console/keys" {
            (csrf_field(&h.session))
            label for="key-name" { "Key name" }
            input id="key-name" name="name" type="text" maxlength="100";
            label for="key-expires" { "Expires" }
            select id="key-expires" name="expires" {
                @for (value, text) in EXPIRIES { option value=(value) { (text) } }
            }
            input id="key-manage" name="manage" type="checkbox" value="on";
            label for="key-manage" { "Management key" }
            button type="submit" { "Create key" }
        }
        p.hint { "A management key can create, revoke, roll and change this account's keys through the API ("
            code { "kie keys" } "); keep task keys without it. Caps are in credits: hourly and daily per UTC hour and day, total over the key's life; a request over a cap gets code 433. Leave a cap empty for none; allowed IPs are CIDR blocks or addresses separated by spaces (empty: any address)." }
        table.list {
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Prefix" } th scope="col" { "Created" }
                th scope="col" { "Last used" } th scope="col" { "Expires" } th scope="col" { "Status" }
                th scope="col" { "Caps (used / cap)" } th scope="col" { "Allowed IPs" } th scope="col" { "Scope" }
                th scope="col" { span.sr { "Actions" } }
            } }
            tbody {
                @for k in keys {
                    @let label = k.name.as_deref().unwrap_or(&k.prefix);
                    tr data-key=(k.id) {
                        td { (k.name.as_deref().unwrap_or("—")) }
                        td { code { (k.prefix) } }
                        td { (time(k.created_at)) }
                        td.last-used { @match k.last_used_at { Some(t) => (time(t)), None => "never" } }
                        td { (opt_time(k.expires_at)) }
                        td { span class=(format!("state {}", k.status)) { (k.status) } }
                        td.caps {
                            "hourly " (cap_usage(k.usage.hourly, k.caps.hourly)) br;
                            "daily " (cap_usage(k.usage.daily, k.caps.daily)) br;
                            "total " (cap_usage(k.usage.total, k.caps.total))
                        }
                        td.ips {
                            @if k.allow_ips.is_empty() { "any" } @else {
                                @for (i, ip) in k.allow_ips.iter().enumerate() {
                                    @if i > 0 { " " } code { (ip) }
                                }
                            }
                        }
                        td { @if k.manage { strong { "management" } } @else { "tasks" } }
                        td {
                            @if k.status == "active" {
                                @let open = ask == Some(k.id.as_str());
                                form.revoke method="post" action=(format!("/console/keys/{}/revoke", k.id)) {
                                    (csrf_field(&h.session))
                                    @if !open {
                                        button type="submit" name="step" value="ask" class="reveal"
                                            aria-label=(format!("Revoke {label}")) { "Revoke" }
                                    }
                                    span.confirm hidden[!open] {
                                        "Revoke this key? "
                                        button type="submit" name="step" value="confirm" class="danger" { "Confirm" }
                                    }
                                }
                                form.roll method="post" action=(format!("/console/keys/{}/roll", k.id)) {
                                    (csrf_field(&h.session))
                                    select name="grace" aria-label=(format!("Grace period for {label}")) {
                                        @for (value, text) in GRACES { option value=(value) { (text) } }
                                    }
                                    button type="submit" aria-label=(format!("Roll {label}")) { "Roll" }
                                }
                                details.edit {
                                    summary { "Edit caps, IPs and scope" }
                                    form.caps method="post" action=(format!("/console/keys/{}/update", k.id)) {
                                        (csrf_field(&h.session))
                                        label { "Hourly cap " input name="cap_hourly" type="text" inputmode="decimal" size="6"
                                            value=(cap_value(k.caps.hourly)) aria-label=(format!("Hourly cap of {label}")); }
                                        label { "Daily cap " input name="cap_daily" type="text" inputmode="decimal" size="6"
                                            value=(cap_value(k.caps.daily)) aria-label=(format!("Daily cap of {label}")); }
                                        label { "Total cap " input name="cap_total" type="text" inputmode="decimal" size="6"
                                            value=(cap_value(k.caps.total)) aria-label=(format!("Total cap of {label}")); }
                                        label { "Allowed IPs " input name="allow_ips" type="text" size="30"
                                            value=(k.allow_ips.join(" ")) aria-label=(format!("Allowed IPs of {label}")); }
                                        input type="hidden" name="set_manage" value="1";
                                        label { input name="manage" type="checkbox" value="on" checked[k.manage]
                                            aria-label=(format!("Management scope of {label}")); " Management scope" }
                                        button type="submit" aria-label=(format!("Save caps and IPs of {label}")) { "Save" }
                                    }
                                }
                            }
                        }
                    }
                }
                @if keys.is_empty() { tr { td colspan="10" { "No keys yet." } } }
            }
        }
    };
    page(&h.session, "/console/keys", "API keys", body)
}

pub async fn keys(State(state): State<AppState>, h: Holder) -> PageResult {
    let keys = accounts::list_keys(&state.db, Some(&h.account_id))
        .await
        .map_err(internal)?;
    Ok(keys_page(&h, &keys, None, None, None))
}

#[derive(Deserialize)]
pub struct KeyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    /// The **Management key** checkbox (`on` when ticked).
    #[serde(default)]
    manage: String,
    /// Expiry: one of [`EXPIRIES`] (empty: never).
    #[serde(default)]
    expires: String,
}

/// Expiries offered when creating a key: (form value, label); see [`expiry_ms`].
const EXPIRIES: &[(&str, &str)] = &[
    ("", "never"),
    ("1d", "in 1 day"),
    ("7d", "in 7 days"),
    ("30d", "in 30 days"),
    ("90d", "in 90 days"),
    ("365d", "in 1 year"),
];

fn expiry_ms(v: &str) -> Option<Option<i64>> {
    match v {
        "" => Some(None),
        "1d" => Some(Some(DAY_MS)),
        "7d" => Some(Some(7 * DAY_MS)),
        "30d" => Some(Some(30 * DAY_MS)),
        "90d" => Some(Some(90 * DAY_MS)),
        "365d" => Some(Some(365 * DAY_MS)),
        _ => None,
    }
}

pub async fn create_key(
    State(state): State<AppState>,
    h: Holder,
    Form(f): Form<KeyForm>,
) -> PageResult {
    if let Some(r) = csrf_refusal(&h.session, &f.csrf) {
        return Ok(r);
    }
    let name = f.name.trim();
    if name.chars().count() > 100 {
        let keys = accounts::list_keys(&state.db, Some(&h.account_id))
            .await
            .map_err(internal)?;
        return Ok(keys_page(
            &h,
            &keys,
            None,
            None,
            Some("A key name has at most 100 characters."),
        ));
    }
    let name = (!name.is_empty()).then_some(name);
    let Some(expires_in) = expiry_ms(f.expires.trim()) else {
        let keys = accounts::list_keys(&state.db, Some(&h.account_id))
            .await
            .map_err(internal)?;
        let resp = keys_page(
            &h,
            &keys,
            None,
            None,
            Some("Expires: choose one of the offered times."),
        );
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, resp).into_response());
    };
    let expires_at = expires_in.map(|ms| crate::store::now_ms() + ms);
    let opts = accounts::KeyOptions {
        manage: !f.manage.is_empty(),
        ..Default::default()
    };
    let k = accounts::create_key_with(&state.db, &h.account_id, name, expires_at, &opts)
        .await
        .map_err(internal)?;
    tracing::info!(user = %h.session.user.id, key = %k.id, prefix = %k.prefix, manage = k.manage, "console: key created");
    let keys = accounts::list_keys(&state.db, Some(&h.account_id))
        .await
        .map_err(internal)?;
    Ok(keys_page(&h, &keys, Some(&k), None, None))
}

#[derive(Deserialize)]
pub struct RevokeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    step: String,
}

pub async fn revoke_key(
    State(state): State<AppState>,
    h: Holder,
    Path(id): Path<String>,
    Form(f): Form<RevokeForm>,
) -> PageResult {
    if let Some(r) = csrf_refusal(&h.session, &f.csrf) {
        return Ok(r);
    }
    let keys = accounts::list_keys(&state.db, Some(&h.account_id))
        .await
        .map_err(internal)?;
    if !keys.iter().any(|k| k.id == id) {
        return Ok(not_found().await);
    }
    if f.step != "confirm" {
        // without the script: the row asks for the confirmation
        return Ok(keys_page(&h, &keys, None, Some(&id), None));
    }
    accounts::revoke_key(&state.db, &id)
        .await
        .map_err(internal)?;
    tracing::info!(user = %h.session.user.id, key = %id, "console: key revoked");
    Ok(Redirect::to("/console/keys").into_response())
}

/// Grace periods offered when rolling a key: (form value, label).
const GRACES: &[(&str, &str)] = &[
    ("0", "old key revoked now"),
    ("1h", "old key valid 1 hour"),
    ("24h", "old key valid 24 hours"),
    ("7d", "old key valid 7 days"),
];

#[derive(Deserialize)]
pub struct RollForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    grace: String,
}

/// Replaces a key: the new one is shown once; the old one stays valid for the chosen
/// grace period.
pub async fn roll_key(
    State(state): State<AppState>,
    h: Holder,
    Path(id): Path<String>,
    Form(f): Form<RollForm>,
) -> PageResult {
    if let Some(r) = csrf_refusal(&h.session, &f.csrf) {
        return Ok(r);
    }
    let grace_ms: i64 = match f.grace.as_str() {
        "0" => 0,
        "1h" => 3_600_000,
        "24h" => 86_400_000,
        "7d" => 7 * 86_400_000,
        _ => return Ok(not_found().await),
    };
    let keys = accounts::list_keys(&state.db, Some(&h.account_id))
        .await
        .map_err(internal)?;
    if !keys.iter().any(|k| k.id == id && k.status == "active") {
        return Ok(not_found().await);
    }
    let k = accounts::roll_key(&state.db, &id, grace_ms, None)
        .await
        .map_err(internal)?;
    tracing::info!(user = %h.session.user.id, old = %id, new = %k.id, grace_ms, "console: key rolled");
    let keys = accounts::list_keys(&state.db, Some(&h.account_id))
        .await
        .map_err(internal)?;
    Ok(keys_page(&h, &keys, Some(&k), None, None))
}

#[derive(Deserialize)]
pub struct CapsForm {
    #[serde(default)]
    csrf: String,
    /// Absent: unchanged; empty: no cap.
    cap_hourly: Option<String>,
    cap_daily: Option<String>,
    cap_total: Option<String>,
    /// Absent: unchanged; empty: any address.
    allow_ips: Option<String>,
    /// Present (the edit form sends it): `manage` sets the scope; absent: unchanged.
    set_manage: Option<String>,
    /// The scope checkbox (`on` when ticked).
    #[serde(default)]
    manage: String,
}

/// One cap field of the form: `None` unchanged, `Some(None)` no cap.
fn form_cap(what: &str, v: Option<&str>) -> Result<Option<Option<Credits>>, String> {
    let Some(v) = v.map(str::trim) else {
        return Ok(None);
    };
    if v.is_empty() || v.eq_ignore_ascii_case("none") {
        return Ok(Some(None));
    }
    match v.parse::<Credits>() {
        Ok(c) if c.0 >= 0 => Ok(Some(Some(c))),
        Ok(_) => Err(format!("{what}: a cap must not be negative.")),
        Err(e) => Err(format!("{what}: {e}.")),
    }
}

/// Changes a key's caps and IP allowlist (the same change as `kie admin key update`).
pub async fn update_key(
    State(state): State<AppState>,
    h: Holder,
    Path(id): Path<String>,
    Form(f): Form<CapsForm>,
) -> PageResult {
    if let Some(r) = csrf_refusal(&h.session, &f.csrf) {
        return Ok(r);
    }
    let keys = accounts::list_keys(&state.db, Some(&h.account_id))
        .await
        .map_err(internal)?;
    if !keys.iter().any(|k| k.id == id && k.status == "active") {
        return Ok(not_found().await);
    }
    let parsed = (|| -> Result<accounts::KeyUpdate, String> {
        Ok(accounts::KeyUpdate {
            hourly: form_cap("Hourly cap", f.cap_hourly.as_deref())?,
            daily: form_cap("Daily cap", f.cap_daily.as_deref())?,
            total: form_cap("Total cap", f.cap_total.as_deref())?,
            allow_ips: match f.allow_ips.as_deref() {
                None => None,
                Some(list) => {
                    let items: Vec<&str> = list
                        .split(|c: char| c.is_whitespace() || c == ',')
                        .filter(|s| !s.is_empty())
                        .collect();
                    if items.len() > crate::api::keys::MAX_ALLOW {
                        return Err(format!(
                            "Allowed IPs: at most {} entries.",
                            crate::api::keys::MAX_ALLOW
                        ));
                    }
                    Some(
                        crate::ipallow::parse_list(&items)
                            .map_err(|e| format!("Allowed IPs: {e}."))?,
                    )
                }
            },
            manage: f.set_manage.as_ref().map(|_| !f.manage.is_empty()),
        })
    })();
    let u = match parsed {
        Ok(u) => u,
        Err(e) => {
            let resp = keys_page(&h, &keys, None, None, Some(&e));
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, resp).into_response());
        }
    };
    accounts::update_key(&state.db, &id, &u)
        .await
        .map_err(internal)?;
    tracing::info!(user = %h.session.user.id, key = %id, "console: key caps updated");
    Ok(Redirect::to("/console/keys").into_response())
}

// ---- Tasks --------------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub struct TaskQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    before: String,
}

fn parse_day(s: &str) -> Option<i64> {
    let d = time::Date::parse(
        s.trim(),
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .ok()?;
    Some(d.midnight().assume_utc().unix_timestamp() * 1000)
}

/// A keyset cursor `created_at.id`.
fn parse_cursor(s: &str) -> Option<(i64, String)> {
    let (t, id) = s.split_once('.')?;
    Some((t.parse().ok()?, id.to_string()))
}

const STATES: &[&str] = &["waiting", "queuing", "generating", "success", "fail"];

pub async fn tasks(
    State(state): State<AppState>,
    h: Holder,
    Query(q): Query<TaskQuery>,
) -> PageResult {
    let filter = tasks::LogFilter {
        state: STATES
            .iter()
            .find(|s| **s == q.state)
            .map(|s| s.to_string()),
        model: (!q.model.is_empty()).then(|| q.model.clone()),
        from: parse_day(&q.from),
        to: parse_day(&q.to).map(|t| t + DAY_MS),
    };
    let rows = tasks::log(
        &state.db,
        &h.account_id,
        &filter,
        parse_cursor(&q.before),
        PAGE,
    )
    .await?;
    // the server's models (reading the account's distinct models would scan its log)
    let models: Vec<&String> = state.config.models.keys().collect();
    let next = (rows.len() as i64 == PAGE).then(|| {
        let last = rows.last().expect("a full page");
        let mut u = url::form_urlencoded::Serializer::new(String::new());
        u.append_pair("state", &q.state)
            .append_pair("model", &q.model)
            .append_pair("from", &q.from)
            .append_pair("to", &q.to)
            .append_pair("before", &format!("{}.{}", last.created_at, last.id));
        format!("/console/tasks?{}", u.finish())
    });
    let body = html! {
        form.filters method="get" action="/console/tasks" {
            label for="f-state" { "State" }
            select id="f-state" name="state" {
                option value="" { "any" }
                @for s in STATES { option value=(s) selected[q.state == *s] { (s) } }
            }
            label for="f-model" { "Model" }
            select id="f-model" name="model" {
                option value="" { "any" }
                @for m in &models { option value=(m) selected[&q.model == *m] { (m) } }
            }
            label for="f-from" { "From" }
            input id="f-from" name="from" type="date" value=(q.from);
            label for="f-to" { "To" }
            input id="f-to" name="to" type="date" value=(q.to);
            button type="submit" { "Filter" }
        }
        (task_rows(&rows))
        @if let Some(n) = next { p { a href=(n) rel="next" { "Older tasks" } } }
    };
    Ok(page(&h.session, "/console/tasks", "Tasks", body))
}

/// Pretty-prints a JSON text (unchanged when it is not JSON).
fn pretty(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| json.to_string())
}

pub async fn task(State(state): State<AppState>, h: Holder, Path(id): Path<String>) -> PageResult {
    let Some(t) = tasks::get_for_account(&state.db, &h.account_id, &id).await? else {
        return Ok(not_found().await);
    };
    let result_files = files::of_task(&state.db, &t.id).await?;
    let deliveries = webhooks::deliveries(&state.db, Some(&t.id), 5).await?;
    let now = now_ms();
    let body = html! {
        dl.facts {
            dt { "Task" } dd { code { (t.id) } }
            dt { "Model" } dd { (t.model) }
            dt { "State" } dd { span class=(format!("state {}", t.state)) id="task-state" { (t.state) } }
            dt { "Created" } dd { (time(t.created_at)) }
            dt { "Started" } dd { (opt_time(t.claimed_at)) }
            dt { "Finished" } dd { (opt_time(t.completed_at)) }
            dt { "Credits held" } dd { (Credits(t.price)) }
            dt { "Credits charged" } dd { (Credits(t.consume_credits)) }
            @if !t.fail_msg.is_empty() || !t.fail_code.is_empty() {
                dt { "Failure" } dd id="task-failure" { (t.fail_code) " " (t.fail_msg) }
            }
            dt { "Callback URL" } dd { (t.callback_url.as_deref().unwrap_or("—")) }
        }
        h2 { "Input" }
        pre id="task-input" { (pretty(&t.param)) }
        h2 { "Result" }
        @if t.result_json.is_empty() { p { "No result yet." } } @else { pre id="task-result" { (pretty(&t.result_json)) } }
        h2 { "Result files" }
        (file_table(&h, &result_files, now))
        h2 { "Callback attempts" }
        (delivery_table(&deliveries))
    };
    Ok(page(
        &h.session,
        "/console/tasks",
        &format!("Task {}", t.id),
        body,
    ))
}

fn delivery_table(ds: &[webhooks::DeliveryInfo]) -> Markup {
    html! {
        @if ds.is_empty() { p { "No callbacks." } }
        @for d in ds {
            div.delivery {
                p {
                    "To " code { (d.url) } " — " span class=(format!("state {}", d.state)) { (d.state) }
                    ", " (d.attempts) " attempt(s)"
                    @if let Some(n) = d.next_attempt_at { ", next at " (time(n)) }
                    @if let Some(ev) = &d.event {
                        " (balance event " code.event { (ev) } ")"
                    } @else {
                        " (task " a href=(format!("/console/tasks/{}", d.task_id)) { code { (d.task_id) } } ")"
                    }
                }
                @if !d.attempt_log.is_empty() {
                    table.list {
                        thead { tr { th scope="col" { "#" } th scope="col" { "Started" } th scope="col" { "Status" } th scope="col" { "Error" } th scope="col" class="num" { "ms" } } }
                        tbody {
                            @for a in &d.attempt_log {
                                tr {
                                    td { (a.attempt) }
                                    td { (time(a.started_at)) }
                                    td { (a.status.map(|s| s.to_string()).unwrap_or_else(|| "—".into())) }
                                    td { (a.error.as_deref().unwrap_or("")) }
                                    td.num { (a.duration_ms) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---- Files --------------------------------------------------------------------------

fn file_table(h: &Holder, fs: &[files::FileRecord], now: i64) -> Markup {
    html! {
        table.list {
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Kind" } th scope="col" class="num" { "Size" }
                th scope="col" { "Created" } th scope="col" { "Expires" } th scope="col" { span.sr { "Link" } }
            } }
            tbody {
                @for f in fs {
                    tr {
                        td { (f.name) }
                        td { (f.kind) }
                        td.num { (size(f.size)) }
                        td { (time(f.created_at)) }
                        td { (time(f.expires_at)) }
                        td {
                            @if files::is_live(f, now) {
                                form.inline method="post" action=(format!("/console/files/{}/link", f.id)) {
                                    (csrf_field(&h.session))
                                    button type="submit" aria-label=(format!("Get a link to {}", f.name)) { "Get link" }
                                }
                            } @else { "expired" }
                        }
                    }
                }
                @if fs.is_empty() { tr { td colspan="6" { "No files." } } }
            }
        }
    }
}

#[derive(Deserialize, Default)]
pub struct PageQuery {
    #[serde(default)]
    before: String,
    #[serde(default)]
    since: String,
}

async fn files_page(
    state: &AppState,
    h: &Holder,
    q: &PageQuery,
    link: Option<(&str, &str)>,
    error: Option<&str>,
) -> PageResult {
    let rows = files::of_account(&state.db, &h.account_id, parse_cursor(&q.before), PAGE).await?;
    let next = (rows.len() as i64 == PAGE).then(|| {
        let last = rows.last().expect("a full page");
        format!("/console/files?before={}.{}", last.created_at, last.id)
    });
    let body = html! {
        @if let Some(e) = error { (notice("error", e)) }
        @if let Some((name, url)) = link {
            div.notice.success role="status" {
                p { "A download link for " strong { (name) } ", valid " (humantime::format_duration(state.config.link_ttl)) ":" }
                (copyable("file-link", "Download link", url))
                p { a href=(url) { "Download" } }
            }
        }
        (file_table(h, &rows, now_ms()))
        @if let Some(n) = next { p { a href=(n) rel="next" { "Older files" } } }
    };
    Ok(page(&h.session, "/console/files", "Files", body))
}

pub async fn files(
    State(state): State<AppState>,
    h: Holder,
    Query(q): Query<PageQuery>,
) -> PageResult {
    files_page(&state, &h, &q, None, None).await
}

/// A fresh download link for one of the account's files (priced like
/// `POST /api/v1/common/download-url`).
pub async fn file_link(
    State(state): State<AppState>,
    h: Holder,
    Path(id): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> PageResult {
    if let Some(r) = csrf_refusal(&h.session, &f.csrf) {
        return Ok(r);
    }
    let rec = match files::get(&state.db, &id).await? {
        Some(r) if r.account_id == h.account_id && files::is_live(&r, now_ms()) => r,
        _ => return Ok(not_found().await),
    };
    let link = match crate::api::download_url::issue_download_link(&state, &rec).await {
        Ok(l) => l,
        Err(e) => return Err(internal(format!("issuing a link: {}", e.msg))),
    };
    if let Err(e) = crate::api::download_url::charge_link(&state, &h.account_id, None).await {
        let q = PageQuery::default();
        return files_page(&state, &h, &q, None, Some(&e.msg)).await;
    }
    files_page(
        &state,
        &h,
        &PageQuery::default(),
        Some((&rec.name, &link)),
        None,
    )
    .await
}

// ---- Usage --------------------------------------------------------------------------

pub async fn usage(
    State(state): State<AppState>,
    h: Holder,
    Query(q): Query<PageQuery>,
) -> PageResult {
    let before = q.before.parse().ok();
    let since = parse_day(&q.since);
    let rows = ledger::lines(&state.db, &h.account_id, before, since, PAGE).await?;
    let next = (rows.len() as i64 == PAGE).then(|| {
        let last = rows.last().expect("a full page");
        format!("/console/usage?since={}&before={}", q.since, last.seq)
    });
    let csv = if q.since.is_empty() {
        "/console/usage.csv".to_string()
    } else {
        format!("/console/usage.csv?since={}", q.since)
    };
    let body = html! {
        form.filters method="get" action="/console/usage" {
            label for="u-since" { "Since" }
            input id="u-since" name="since" type="date" value=(q.since);
            button type="submit" { "Show" }
            a.button href=(csv) download="usage.csv" { "Export CSV" }
        }
        table.list {
            thead { tr {
                th scope="col" { "Time" } th scope="col" { "Kind" } th scope="col" class="num" { "Amount" }
                th scope="col" class="num" { "Held" } th scope="col" { "Reason" }
            } }
            tbody {
                @for l in &rows {
                    tr {
                        td { (time(l.created_at)) }
                        td { (l.kind) }
                        td.num { (l.amount) }
                        td.num { (l.held_delta) }
                        td { (l.reason.as_deref().unwrap_or("")) }
                    }
                }
                @if rows.is_empty() { tr { td colspan="5" { "No entries." } } }
            }
        }
        @if let Some(n) = next { p { a href=(n) rel="next" { "Older entries" } } }
        p.hint { "Grants, deductions and charges change the balance; holds reserve credits for running tasks and voids release them." }
    };
    Ok(page(&h.session, "/console/usage", "Usage", body))
}

/// One CSV field, quoted when needed; a leading `=`, `+`, `-` or `@` is prefixed with
/// `'` so a spreadsheet does not run it as a formula.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) && s.parse::<f64>().is_err() {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

pub async fn usage_csv(
    State(state): State<AppState>,
    h: Holder,
    Query(q): Query<PageQuery>,
) -> PageResult {
    let since = parse_day(&q.since);
    let mut out = String::from("time,entry_id,kind,amount,held_delta,reason\n");
    let mut before = None;
    loop {
        let rows = ledger::lines(&state.db, &h.account_id, before, since, 5000).await?;
        for l in &rows {
            out += &format!(
                "{},{},{},{},{},{}\n",
                csv_field(&layout::time(l.created_at)),
                csv_field(&l.entry_id),
                csv_field(&l.kind),
                l.amount,
                l.held_delta,
                csv_field(l.reason.as_deref().unwrap_or(""))
            );
        }
        if rows.len() < 5000 {
            break;
        }
        before = rows.last().map(|l| l.seq);
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"usage.csv\"",
            ),
        ],
        out,
    )
        .into_response())
}

// ---- Callbacks and alerts -------------------------------------------------------------

async fn callbacks_page(
    state: &AppState,
    h: &Holder,
    shown_key: Option<&str>,
    message: Option<(&str, &str)>,
) -> PageResult {
    let key = accounts::webhook_key(&state.db, &h.account_id)
        .await
        .map_err(internal)?;
    let ds = webhooks::deliveries_of_account(&state.db, &h.account_id, 50).await?;
    let body = html! {
        @if let Some((kind, text)) = message { (notice(kind, text)) }
        h2 { "Webhook signing key" }
        @if let Some(k) = shown_key {
            (copyable("webhook-key", "Webhook key", k))
            p.hint { "Verify callbacks with it (Standard Webhooks and KIE.AI signatures)." }
        } @else if key.key.is_some() {
            p { "A key is set: callbacks carry Standard Webhooks and KIE.AI signatures made with it." }
        } @else {
            p { "No key yet: callbacks are sent unsigned." }
        }
        @if let Some(until) = key.previous_until {
            p #previous-key-overlap {
                "The previous key also signs callbacks until " (layout::time(until))
                " (a second " code { "v1," } " signature in " code { "webhook-signature" }
                "; " code { "X-Webhook-Signature" } " is made with the new key)."
            }
        }
        form.inline method="post" action="/console/callbacks/key" {
            (csrf_field(&h.session))
            @if key.key.is_some() && shown_key.is_none() {
                button type="submit" name="action" value="show" { "Show key" }
            }
            @if key.key.is_none() {
                button type="submit" name="action" value="generate" { "Generate key" }
            }
        }
        @if key.key.is_some() {
            form.inline method="post" action="/console/callbacks/key" {
                (csrf_field(&h.session))
                input type="hidden" name="action" value="roll";
                label for="roll-grace" { "Grace period" }
                input id="roll-grace" name="grace" type="text" value=(crate::api::callbacks::DEFAULT_GRACE) required;
                button type="submit" { "Roll key" }
            }
            p.hint { "Rolling makes a new key; during the grace period (0 to 30d, e.g. 1h, 24h, 7d) the old key signs callbacks too, so receivers verifying with either key accept them." }
        }
        h2 { "Replay failed deliveries" }
        form.inline method="post" action="/console/callbacks/replay" {
            (csrf_field(&h.session))
            label for="replay-since" { "Failed since" }
            input id="replay-since" name="since" type="date" required;
            button type="submit" { "Replay" }
        }
        h2 { "Recent deliveries" }
        @if ds.is_empty() { p { "No callbacks yet." } }
        @for d in &ds {
            div.delivery {
                (delivery_table(std::slice::from_ref(d)))
                @if d.state != "pending" {
                    form.inline method="post" action=(format!("/console/callbacks/{}/redeliver", d.id)) {
                        (csrf_field(&h.session))
                        button type="submit" aria-label=(format!("Redeliver {}", d.id)) { "Redeliver" }
                    }
                }
            }
        }
    };
    Ok(page(&h.session, "/console/callbacks", "Callbacks", body))
}

pub async fn callbacks(State(state): State<AppState>, h: Holder) -> PageResult {
    callbacks_page(&state, &h, None, None).await
}

#[derive(Deserialize)]
pub struct KeyAction {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    grace: String,
}

/// Shows the webhook key (on request, never in a page's plain view) or generates the
/// first one.
pub async fn webhook_key(
    State(state): State<AppState>,
    h: Holder,
    Form(f): Form<KeyAction>,
) -> PageResult {
    if let Some(r) = csrf_refusal(&h.session, &f.csrf) {
        return Ok(r);
    }
    let current = accounts::webhook_key(&state.db, &h.account_id)
        .await
        .map_err(internal)?;
    let key = match (f.action.as_str(), current.key) {
        ("show", Some(k)) => k,
        ("generate", None) => {
            let k = accounts::generate_webhook_key(&state.db, &h.account_id)
                .await
                .map_err(internal)?;
            tracing::info!(user = %h.session.user.id, "console: webhook key generated");
            k.key.unwrap_or_default()
        }
        ("roll", Some(_)) => {
            let grace = match crate::api::callbacks::grace_ms(&f.grace) {
                Ok(g) => g,
                Err(e) => {
                    let text = format!("Grace period: {e}");
                    return callbacks_page(&state, &h, None, Some(("error", &text))).await;
                }
            };
            let k = accounts::roll_webhook_key(&state.db, &h.account_id, grace)
                .await
                .map_err(internal)?;
            tracing::info!(user = %h.session.user.id, grace_ms = grace, "console: webhook key rolled");
            k.key.unwrap_or_default()
        }
        _ => return callbacks_page(&state, &h, None, None).await,
    };
    callbacks_page(&state, &h, Some(&key), None).await
}

pub async fn redeliver(
    State(state): State<AppState>,
    h: Holder,
    Path(id): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> PageResult {
    if let Some(r) = csrf_refusal(&h.session, &f.csrf) {
        return Ok(r);
    }
    let done = webhooks::redeliver(&state.db, &h.account_id, &id).await?;
    if done {
        state.jobs.webhooks.notify_waiters();
        tracing::info!(user = %h.session.user.id, delivery = %id, "console: redelivery");
    }
    let msg = if done {
        ("success", "Queued for one more attempt.")
    } else {
        ("error", "No such finished delivery.")
    };
    callbacks_page(&state, &h, None, Some(msg)).await
}

#[derive(Deserialize)]
pub struct ReplayForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    since: String,
}

pub async fn replay(
    State(state): State<AppState>,
    h: Holder,
    Form(f): Form<ReplayForm>,
) -> PageResult {
    if let Some(r) = csrf_refusal(&h.session, &f.csrf) {
        return Ok(r);
    }
    let Some(since) = parse_day(&f.since) else {
        return callbacks_page(
            &state,
            &h,
            None,
            Some(("error", "Give a date (YYYY-MM-DD).")),
        )
        .await;
    };
    let n = webhooks::replay_failed(&state.db, &h.account_id, since).await?;
    if n > 0 {
        state.jobs.webhooks.notify_waiters();
    }
    tracing::info!(user = %h.session.user.id, replayed = n, "console: replay of failed deliveries");
    let text = format!("{n} failed deliveries queued again.");
    callbacks_page(&state, &h, None, Some(("success", &text))).await
}

async fn alerts_page(state: &AppState, h: &Holder, message: Option<(&str, &str)>) -> PageResult {
    let s = crate::alerts::get(&state.db, &h.account_id)
        .await?
        .ok_or_else(|| internal("account not found"))?;
    let c = |c: Option<Credits>| c.map(|c| c.to_string()).unwrap_or_default();
    let body = html! {
        @if let Some((kind, text)) = message { (notice(kind, text)) }
        p { "The server POSTs a signed event (Standard Webhooks and KIE.AI signatures, with the webhook key of the Callbacks page) to the alert URL once when the available balance crosses below a threshold (" code { "balance.warning" } ", " code { "balance.critical" } ") and once when it is back at or above the warning threshold (" code { "balance.recovered" } "), whoever moved it." }
        p { "Available now: " strong { (s.available.to_string()) } " credits; state: " strong { (s.state) } "." }
        form method="post" action="/console/alerts" {
            (csrf_field(&h.session))
            label for="alert-warn" { "Warning threshold (credits)" }
            input id="alert-warn" name="warn" type="text" inputmode="decimal" value=(c(s.warn));
            label for="alert-critical" { "Critical threshold (credits)" }
            input id="alert-critical" name="critical" type="text" inputmode="decimal" value=(c(s.critical));
            label for="alert-url" { "Alert URL" }
            input id="alert-url" name="url" type="url" value=(s.url.as_deref().unwrap_or(""));
            p.hint { "Leave a field empty to clear it." }
            button type="submit" { "Save" }
        }
        form.inline method="post" action="/console/alerts/test" {
            (csrf_field(&h.session))
            button type="submit" { "Send a test event" }
        }
    };
    Ok(page(&h.session, "/console/alerts", "Alerts", body))
}

pub async fn alerts(State(state): State<AppState>, h: Holder) -> PageResult {
    alerts_page(&state, &h, None).await
}

#[derive(Deserialize)]
pub struct AlertsForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    warn: String,
    #[serde(default)]
    critical: String,
    #[serde(default)]
    url: String,
}

pub async fn set_alerts(
    State(state): State<AppState>,
    h: Holder,
    Form(f): Form<AlertsForm>,
) -> PageResult {
    if let Some(r) = csrf_refusal(&h.session, &f.csrf) {
        return Ok(r);
    }
    let cur = crate::alerts::get(&state.db, &h.account_id)
        .await?
        .ok_or_else(|| internal("account not found"))?;
    let field = |v: &str| {
        let v = v.trim();
        if v.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::Value::String(v.to_string())
        }
    };
    let v = serde_json::json!({"warn": field(&f.warn), "critical": field(&f.critical), "url": field(&f.url)});
    let u = match crate::api::alerts::parse_update(&state, &v, &cur) {
        Ok(u) => u,
        Err(e) => return alerts_page(&state, &h, Some(("error", &e.msg))).await,
    };
    crate::alerts::set(&state.db, &h.account_id, &u).await?;
    tracing::info!(user = %h.session.user.id, "console: alerts set");
    alerts_page(&state, &h, Some(("success", "Alerts saved."))).await
}

pub async fn test_alert(
    State(state): State<AppState>,
    h: Holder,
    Form(f): Form<CsrfOnly>,
) -> PageResult {
    if let Some(r) = csrf_refusal(&h.session, &f.csrf) {
        return Ok(r);
    }
    match crate::alerts::send_test(&state.db, &h.account_id).await? {
        Some(id) => {
            state.jobs.webhooks.notify_waiters();
            let text = format!("Test event {id} queued.");
            alerts_page(&state, &h, Some(("success", &text))).await
        }
        None => alerts_page(&state, &h, Some(("error", "Set an alert URL first."))).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burn_rate_is_monitors_arithmetic() {
        // 24 credits spent in 24 h: 1 credit/h; 10 credits left last 10 h
        let (per_hour, eta) = ledger::burn(2400, 86_400.0, Credits(1000));
        assert!((per_hour - 1.0).abs() < 1e-9);
        assert!((eta.unwrap() - 36_000.0).abs() < 1e-6);
        assert_eq!(ledger::burn(0, 86_400.0, Credits(1000)), (0.0, None));
    }

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_field("-1.5"), "-1.5");
    }

    #[test]
    fn cursors_and_days() {
        assert_eq!(parse_cursor("12.task_x"), Some((12, "task_x".into())));
        assert_eq!(parse_cursor("x"), None);
        assert_eq!(parse_day("1970-01-02"), Some(DAY_MS));
        assert_eq!(parse_day("nope"), None);
    }
}
