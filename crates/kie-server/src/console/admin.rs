//! The operator's pages: accounts (search, balance, keys, grant or deduct credits,
//! invites) and the maintenance and feature switches.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use kie_wire::Credits;
use maud::html;
use serde::Deserialize;

use super::layout::{copyable, csrf_field, message_page, notice, opt_time, page, time};
use super::session::{csrf_refusal, Operator, Refusal};
use super::users;
use crate::ledger::{self, LedgerError};
use crate::operator::{CreditChangeError, CreditOp};
use crate::state::AppState;
use crate::{accounts, operator, settings};

type PageResult = Result<Response, Refusal>;

fn internal(e: impl std::fmt::Display) -> Refusal {
    Refusal::Internal(e.to_string())
}

#[derive(Deserialize, Default)]
pub struct Search {
    #[serde(default)]
    q: String,
}

pub async fn accounts(
    State(state): State<AppState>,
    Operator(s): Operator,
    Query(q): Query<Search>,
) -> PageResult {
    let rows = operator::search_accounts(&state.db, &q.q).await?;
    let body = html! {
        form.filters method="get" action="/console/admin/" role="search" {
            label for="q" { "Search accounts" }
            input id="q" name="q" type="search" value=(q.q);
            button type="submit" { "Search" }
        }
        table.list {
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Id" } th scope="col" { "Email" }
                th scope="col" class="num" { "Available" } th scope="col" class="num" { "Held" }
            } }
            tbody {
                @for a in &rows {
                    tr {
                        td { a href=(format!("/console/admin/accounts/{}", a.id)) { (a.name) } }
                        td { code { (a.id) } }
                        td { (a.email.as_deref().unwrap_or("—")) }
                        td.num { (Credits(a.balance - a.held)) }
                        td.num { (Credits(a.held)) }
                    }
                }
                @if rows.is_empty() { tr { td colspan="5" { "No accounts match." } } }
            }
        }
        @if rows.len() == operator::SEARCH_LIMIT { p.hint { "The first 200 matches; narrow the search." } }
    };
    Ok(page(&s, "/console/admin/", "Accounts", body))
}

struct Flash<'a> {
    ok: Option<String>,
    error: Option<String>,
    invite: Option<(&'a str, String)>,
}

async fn account_page(
    state: &AppState,
    s: &users::Session,
    id: &str,
    flash: Flash<'_>,
) -> PageResult {
    let Some(acc) = accounts::find(&state.db, id).await? else {
        return Ok(message_page(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such account.",
        ));
    };
    let bal = ledger::balance(&state.db, &acc.id)
        .await?
        .ok_or_else(|| internal("account vanished"))?;
    let keys = accounts::list_keys(&state.db, Some(&acc.id))
        .await
        .map_err(internal)?;
    let email = users::account_email(&state.db, &acc.id).await?;
    let idem = format!("console-{}", kie_wire::apikey::random_base62(12));
    let body = html! {
        @if let Some(m) = &flash.ok { (notice("success", m)) }
        @if let Some(e) = &flash.error { (notice("error", e)) }
        @if let Some((email, url)) = &flash.invite {
            div.notice.success role="status" {
                p { "Invite for " strong { (email) } " (valid 24 hours, once):" }
                (copyable("invite-url", "Invite link", url))
            }
        }
        dl.facts {
            dt { "Id" } dd { code { (acc.id) } }
            dt { "Email" } dd { (email.as_deref().unwrap_or("—")) }
            dt { "Balance" } dd id="balance" { (bal.balance) }
            dt { "Available" } dd id="available" { (bal.available()) }
            dt { "Held" } dd { (bal.held) }
        }
        h2 { "Grant or deduct credits" }
        form.stack method="post" action=(format!("/console/admin/accounts/{}/credits", acc.id)) {
            (csrf_field(s))
            label for="op" { "Operation" }
            select id="op" name="op" {
                option value="grant" { "Grant" }
                option value="deduct" { "Deduct" }
            }
            label for="amount" { "Amount" }
            input id="amount" name="amount" type="text" inputmode="decimal" required placeholder="10.50";
            label for="reason" { "Reason" }
            input id="reason" name="reason" type="text" required maxlength="500";
            label for="idem" { "Idempotency key" }
            input id="idem" name="idempotency_key" type="text" required maxlength="200" value=(idem);
            button type="submit" { "Apply" }
        }
        h2 { "Invite someone to this account" }
        form.inline method="post" action=(format!("/console/admin/accounts/{}/invite", acc.id)) {
            (csrf_field(s))
            label for="invite-email" { "Invite email" }
            input id="invite-email" name="email" type="email" required value=(email.clone().unwrap_or_default());
            button type="submit" { "Create invite" }
        }
        h2 { "API keys" }
        table.list {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Prefix" } th scope="col" { "Created" } th scope="col" { "Expires" } th scope="col" { "Status" } } }
            tbody {
                @for k in &keys {
                    tr {
                        td { (k.name.as_deref().unwrap_or("—")) }
                        td { code { (k.prefix) } }
                        td { (time(k.created_at)) }
                        td { (opt_time(k.expires_at)) }
                        td { (k.status) }
                    }
                }
                @if keys.is_empty() { tr { td colspan="5" { "No keys." } } }
            }
        }
    };
    Ok(page(
        s,
        "/console/admin/",
        &format!("Account {}", acc.name),
        body,
    ))
}

pub async fn account(
    State(state): State<AppState>,
    Operator(s): Operator,
    Path(id): Path<String>,
) -> PageResult {
    account_page(
        &state,
        &s,
        &id,
        Flash {
            ok: None,
            error: None,
            invite: None,
        },
    )
    .await
}

#[derive(Deserialize)]
pub struct CreditsForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    op: String,
    #[serde(default)]
    amount: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    idempotency_key: String,
}

pub async fn credits(
    State(state): State<AppState>,
    Operator(s): Operator,
    Path(id): Path<String>,
    Form(f): Form<CreditsForm>,
) -> PageResult {
    if let Some(r) = csrf_refusal(&s, &f.csrf) {
        return Ok(r);
    }
    let fail = |m: String| Flash {
        ok: None,
        error: Some(m),
        invite: None,
    };
    let amount = match f.amount.trim().parse::<Credits>() {
        Ok(c) => c,
        Err(_) => {
            let m = format!(
                "'{}' is not an amount: a positive number with at most 2 decimals.",
                f.amount
            );
            return account_page(&state, &s, &id, fail(m)).await;
        }
    };
    let op = match f.op.as_str() {
        "grant" => CreditOp::Grant,
        "deduct" => CreditOp::Deduct,
        _ => {
            let m = "Choose grant or deduct.".to_string();
            return account_page(&state, &s, &id, fail(m)).await;
        }
    };
    let r =
        operator::change_credits(&state.db, &id, op, amount, &f.reason, &f.idempotency_key).await;
    let flash = match r {
        Ok((account, applied)) => {
            tracing::info!(operator = %s.user.id, %account, ?op, %amount, "console: credits changed");
            Flash {
                ok: Some(format!(
                    "{} {} credits: available now {}.",
                    if op == CreditOp::Grant {
                        "Granted"
                    } else {
                        "Deducted"
                    },
                    amount,
                    applied.available()
                )),
                error: None,
                invite: None,
            }
        }
        Err(CreditChangeError::UnknownAccount) => {
            return Ok(message_page(
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such account.",
            ))
        }
        Err(CreditChangeError::Invalid {
            field: "amount", ..
        }) => fail(format!(
            "'{}' is not an amount: a positive number with at most 2 decimals.",
            f.amount
        )),
        Err(CreditChangeError::Invalid {
            field: "idempotencyKey",
            msg,
        }) if msg.starts_with("already") => {
            fail("Refused: that idempotency key was already used for a different change.".into())
        }
        Err(CreditChangeError::Invalid { .. }) => {
            fail("A reason and an idempotency key are required.".into())
        }
        Err(CreditChangeError::Ledger(LedgerError::InsufficientCredits)) => {
            fail("Refused: the amount exceeds the available balance.".into())
        }
        Err(CreditChangeError::Db(e) | CreditChangeError::Ledger(LedgerError::Db(e))) => {
            return Err(e.into())
        }
        Err(e) => fail(format!("Refused: {e}")),
    };
    account_page(&state, &s, &id, flash).await
}

#[derive(Deserialize)]
pub struct InviteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
}

/// The one-time URL of an invite.
pub fn invite_url(public_url: &url::Url, token: &str) -> String {
    format!(
        "{}/console/invite/{token}",
        public_url.as_str().trim_end_matches('/')
    )
}

pub async fn invite(
    State(state): State<AppState>,
    Operator(s): Operator,
    Path(id): Path<String>,
    Form(f): Form<InviteForm>,
) -> PageResult {
    if let Some(r) = csrf_refusal(&s, &f.csrf) {
        return Ok(r);
    }
    let flash = match users::invite(&state.db, Some(&f.email), Some(&id)).await {
        Ok(inv) => {
            tracing::info!(operator = %s.user.id, user = %inv.user.id, "console: invite created");
            let url = invite_url(&state.config.public_url, &inv.token);
            return account_page(
                &state,
                &s,
                &id,
                Flash {
                    ok: None,
                    error: None,
                    invite: Some((&inv.user.email, url)),
                },
            )
            .await;
        }
        Err(users::UserError::Db(e)) => return Err(e.into()),
        Err(e) => Flash {
            ok: None,
            error: Some(e.to_string()),
            invite: None,
        },
    };
    account_page(&state, &s, &id, flash).await
}

pub async fn settings(State(state): State<AppState>, Operator(s): Operator) -> PageResult {
    // read from the database, not the node's snapshot: a switch just flipped shows
    let snap = settings::load(&state.db).await?;
    let (backlog, (db_ok, store_ok)) = tokio::join!(
        operator::backlog(&state.db),
        operator::reachable(&state.db, &state.blobs)
    );
    let backlog = backlog?;
    let yes_no = |b: bool| if b { "reachable" } else { "NOT reachable" };
    let body = html! {
        h2 { "Health" }
        dl.facts {
            dt { "Database" } dd id="health-db" { (state.db.backend()) ", " (yes_no(db_ok)) }
            dt { "Object store" } dd id="health-store" { (state.blobs.describe()) ", " (yes_no(store_ok)) }
            dt { "Open tasks" } dd { (backlog.open_tasks) }
            dt { "Callback backlog" } dd id="backlog" { (backlog.pending_deliveries) " pending, " (backlog.failed_deliveries_24h) " failed in the last 24 h" }
        }
        p.hint { "Request and error rates: the " a href="/console/admin/health" { "Health" } " page, or " a href="/metrics" { "/metrics" } " (kie_http_requests_total by route and code)." }
        h2 { "Link signing key" }
        form.inline method="post" action="/console/admin/settings" {
            (csrf_field(&s))
            input type="hidden" name="name" value="signing-key";
            p { "Active key " code id="signing-key" { (backlog.signing_key.unwrap_or_default()) } ". Rotating retires it; its links stay valid until they expire. " }
            button type="submit" name="value" value="rotate" { "Rotate signing key" }
        }
        h2 { "Maintenance" }
        form.inline method="post" action="/console/admin/settings" {
            (csrf_field(&s))
            input type="hidden" name="name" value="maintenance";
            p {
                "Maintenance mode is " strong id="maintenance-state" { (if snap.maintenance { "on" } else { "off" }) }
                ": while on, every /api request answers code 455. "
            }
            @if snap.maintenance {
                button type="submit" name="value" value="off" { "Turn maintenance off" }
            } @else {
                button type="submit" name="value" value="on" class="danger" { "Turn maintenance on" }
            }
        }
        h2 { "Features" }
        table.list {
            thead { tr { th scope="col" { "Feature" } th scope="col" { "Endpoints" } th scope="col" { "State" } th scope="col" { span.sr { "Switch" } } } }
            tbody {
                @for (name, what) in settings::FEATURES {
                    @let off = snap.is_disabled(name);
                    tr {
                        td { code { (name) } }
                        td { (what) }
                        td { (if off { "disabled" } else { "enabled" }) }
                        td {
                            form.inline method="post" action="/console/admin/settings" {
                                (csrf_field(&s))
                                input type="hidden" name="name" value=(format!("feature:{name}"));
                                @if off {
                                    button type="submit" name="value" value="on" aria-label=(format!("Enable {name}")) { "Enable" }
                                } @else {
                                    button type="submit" name="value" value="off" aria-label=(format!("Disable {name}")) { "Disable" }
                                }
                            }
                        }
                    }
                }
            }
        }
        p.hint { "Every node applies a change within a second." }
    };
    Ok(page(&s, "/console/admin/settings", "Settings", body))
}

/// The node's health: what `/readyz` checks, the work waiting, and request and error
/// rates over the last minute from the request counters (sampled every 5 s by this
/// node; each node counts its own requests).
pub async fn health(State(state): State<AppState>, Operator(s): Operator) -> PageResult {
    let (backlog, by_account, (db_ok, store_ok)) = tokio::join!(
        operator::backlog(&state.db),
        operator::backlog_by_account(&state.db),
        operator::reachable(&state.db, &state.blobs)
    );
    let (backlog, by_account) = (backlog?, by_account?);
    let r = crate::metrics::rates();
    let yes_no = |b: bool| if b { "reachable" } else { "NOT reachable" };
    let ready = db_ok && store_ok;
    let body = html! {
        h2 { "Readiness" }
        dl.facts {
            dt { "Ready" } dd id="health-ready" { (if ready { "yes" } else { "no" }) }
            dt { "Database" } dd id="health-db" { (state.db.backend()) ", " (yes_no(db_ok)) }
            dt { "Object store" } dd id="health-store" { (state.blobs.describe()) ", " (yes_no(store_ok)) }
            dt { "Open tasks" } dd id="health-open-tasks" { (backlog.open_tasks) }
            dt { "Callback backlog" } dd id="health-backlog" {
                (backlog.pending_deliveries) " pending (" (backlog.accounts_waiting) " accounts), " (backlog.failed_deliveries_24h) " failed in the last 24 h"
            }
        }
        h2 { "Delivery backlog by account" }
        table.list #backlog-accounts {
            thead { tr {
                th scope="col" { "Account" } th scope="col" class="num" { "Pending" }
                th scope="col" { "Oldest pending since" } th scope="col" class="num" { "Failed in 24 h" }
            } }
            tbody {
                @for b in &by_account {
                    tr {
                        td { a href=(format!("/console/admin/accounts/{}", b.account)) { (b.name) } }
                        td.num { (b.pending) }
                        td { (opt_time(b.oldest_pending_at)) }
                        td.num { (b.failed_24h) }
                    }
                }
                @if by_account.is_empty() { tr { td colspan="4" { "No delivery is waiting or failed." } } }
            }
        }
        h2 { "Requests on this node" }
        table.list #rates {
            caption { "Over the last " span #rate-window { (format!("{:.0}", r.window_secs)) } " s" }
            thead { tr {
                th scope="col" { "What" } th scope="col" { "Per second" } th scope="col" { "Count" }
            } }
            tbody {
                tr #rate-requests {
                    th scope="row" { "Requests" }
                    td.per-sec { (format!("{:.2}", r.requests_per_sec())) }
                    td.count { (r.requests) }
                }
                tr #rate-client-errors {
                    th scope="row" { "Client errors (code 400–499)" }
                    td.per-sec { (format!("{:.2}", r.client_errors_per_sec())) }
                    td.count { (r.client_errors) }
                }
                tr #rate-server-errors {
                    th scope="row" { "Server errors (code 500 and above)" }
                    td.per-sec { (format!("{:.2}", r.server_errors_per_sec())) }
                    td.count { (r.server_errors) }
                }
            }
        }
        p.hint { "From the counters behind " a href="/metrics" { "/metrics" } " (kie_http_requests_total by route and code), sampled every 5 s by this node; codes are the answers' body codes. Each node counts its own requests." }
    };
    Ok(page(&s, "/console/admin/health", "Health", body))
}

#[derive(Deserialize)]
pub struct SettingForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    value: String,
}

pub async fn change_setting(
    State(state): State<AppState>,
    Operator(s): Operator,
    Form(f): Form<SettingForm>,
) -> PageResult {
    if let Some(r) = csrf_refusal(&s, &f.csrf) {
        return Ok(r);
    }
    let on = f.value == "on";
    if f.name == "signing-key" && f.value == "rotate" {
        crate::files::links::rotate(&state.db).await?;
    } else if f.name == "maintenance" {
        settings::set_maintenance(&state.db, on).await?;
    } else if let Some(feature) = f
        .name
        .strip_prefix("feature:")
        .filter(|n| settings::FEATURES.iter().any(|(k, _)| k == n))
    {
        settings::set_feature(&state.db, feature, on).await?;
    } else {
        return Ok(message_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Unknown setting",
            "There is no such setting.",
        ));
    }
    tracing::info!(operator = %s.user.id, setting = %f.name, value = %f.value, "console: setting changed");
    Ok(Redirect::to("/console/admin/settings").into_response())
}
