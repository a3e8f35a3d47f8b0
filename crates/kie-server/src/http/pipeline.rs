//! The one request path: every request, on every route and both backends, passes
//! [`Pipeline`], one tower `Layer` around the router, built once in `app::router`.
//! A check added here applies to every route; there is no other way in.
//!
//! In order, for each request:
//!
//! 1. the request id (`x-request-id`, echoed when plain, else a new one) and the
//!    request's context (`RequestCtx`: id, route label, caller);
//! 2. the per-IP rate limit (`ratelimit::IpLimiter::check`, against the TCP peer);
//! 3. the request body's deadline (`request_body_timeout`; answered 408 when it fires);
//! 4. maintenance for `/api/...` (`guard::api_refusal`);
//! 5. database health (`guard::db_watch`): quick answers while PostgreSQL is known to
//!    be down, and answers for requests already waiting when it goes down;
//! 6. the router: route matching, the body limit, [`RouteLabel`] (the matched route
//!    becomes the metrics and log label) and the route's feature switch
//!    (`guard::FeatureSwitch`), the handler with its extractors;
//! 7. the way out (`http::finish`): the envelope for answers produced outside the
//!    handlers, internal details replaced by the request id, the status mode, metrics
//!    and the request log line.
//!
//! What differs per route is declared once, next to it in the route table
//! (`api::routes`): its feature switch (`guard::FeatureSwitch`), its envelope kind (the
//! handler's `ApiError::for_upload`), its metrics and log label (the route's own path
//! pattern).
//!
//! Cost: one boxed future per request for the whole pipeline (the six `from_fn`
//! layers it replaces boxed one each and cloned the state into each), and none for
//! [`RouteLabel`], whose future is the handler's.

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::response::Response;
use futures::future::BoxFuture;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

use super::{finish, guard, request_id_from, RequestCtx};
use crate::state::AppState;

/// The layer every request passes (see the module docs).
#[derive(Clone)]
pub struct Pipeline {
    state: AppState,
}

impl Pipeline {
    pub fn new(state: AppState) -> Self {
        Pipeline { state }
    }
}

impl<S> Layer<S> for Pipeline {
    type Service = PipelineService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PipelineService {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct PipelineService<S> {
    inner: S,
    state: AppState,
}

impl<S> Service<Request> for PipelineService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let started = Instant::now();
        let ctx = Arc::new(RequestCtx {
            id: request_id_from(req.headers()),
            ..Default::default()
        });
        req.extensions_mut().insert(ctx.clone());
        // the service that was made ready is the one called; a fresh clone stays here
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Box::pin(async move {
            let method = req.method().clone();
            // a cheap clone (shared bytes); logged without its query string
            let uri = req.uri().clone();
            let resp = through(&state, inner, req).await;
            let route = ctx
                .route
                .get()
                .map(MatchedPath::as_str)
                .unwrap_or("unmatched");
            Ok(finish(
                &state.config,
                &ctx,
                &method,
                uri.path(),
                route,
                resp,
                None,
                started,
            ))
        })
    }
}

/// Steps 2–6 of the module docs.
async fn through<S>(state: &AppState, mut inner: S, req: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let path = req.uri().path();
    if let Some(limiter) = &state.ip_limiter {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        if let Some(refused) = peer.and_then(|ip| limiter.check(ip, path)) {
            return refused;
        }
    }
    if let Some(refused) = guard::api_refusal(state, path) {
        return refused;
    }
    let upload = path.starts_with("/api/file-");
    let timeout = state.config.request_body_timeout;
    let (req, fired) = crate::conn_guard::with_body_deadline(req, timeout);
    let resp = match guard::db_watch(state, req.uri().path()) {
        None => match inner.call(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        },
        Some(watch) => watch.run(inner.call(req)).await,
    };
    match fired {
        Some(f) if f.load(std::sync::atomic::Ordering::Relaxed) => {
            crate::http::body_timed_out(timeout, upload)
        }
        _ => resp,
    }
}

/// Inside the router, on every route, once (one route layer, so one box per route as
/// before the feature switch joined it): the matched route pattern becomes the
/// request's label (metrics, request log), and the route's feature switch, when it has
/// one ([`guard::FeatureSwitch`], declared in the route table), answers 505 while the
/// operator has the feature off. Its future is the handler's own, or a ready answer.
#[derive(Clone, Default)]
pub struct RouteLabel {
    switch: Option<guard::FeatureSwitch>,
}

impl RouteLabel {
    /// The label and `switch`, for the routes of a switched feature.
    pub fn switched(switch: guard::FeatureSwitch) -> Self {
        RouteLabel {
            switch: Some(switch),
        }
    }
}

impl<S> Layer<S> for RouteLabel {
    type Service = RouteLabelService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RouteLabelService {
            inner,
            switch: self.switch.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RouteLabelService<S> {
    inner: S,
    switch: Option<guard::FeatureSwitch>,
}

impl<S> Service<Request<Body>> for RouteLabelService<S>
where
    S: Service<Request<Body>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future =
        futures::future::Either<std::future::Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if let (Some(ctx), Some(p)) = (
            req.extensions().get::<Arc<RequestCtx>>(),
            req.extensions().get::<MatchedPath>(),
        ) {
            let _ = ctx.route.set(p.clone());
        }
        if let Some(refused) = self.switch.as_ref().and_then(guard::FeatureSwitch::refusal) {
            return futures::future::Either::Left(std::future::ready(Ok(refused)));
        }
        futures::future::Either::Right(self.inner.call(req))
    }
}
