//! The one request path: every request, on every route and both backends, passes
//! [`Pipeline`], one tower `Layer` around the router, built once in `app::router`.
//! A check added here applies to every route; there is no other way in.
//!
//! In order, for each request:
//!
//! 1. the request id (`x-request-id`, echoed when plain, else a new one) and the
//!    request's context (`RequestCtx`: id, route label, caller);
//! 2. the per-IP rate limit (`ratelimit::IpCell::check`, the TCP peer's cell);
//! 3. maintenance for `/api/...` (`guard::api_refusal`);
//! 4. the request body's deadline (`request_body_timeout`; answered 408 when it fires)
//!    and size limit (`max_body`, for axum's body extractors), when it has a body;
//! 5. database health (`guard::db_watch`): quick answers while PostgreSQL is known to
//!    be down, and answers for requests already waiting when it goes down;
//! 6. the router: route matching, [`RouteLabel`] (the matched route
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
//! Cost: no box of its own on SQLite ([`PipelineFuture`] holds the router's future;
//! on PostgreSQL the database watch is one box), and none for [`RouteLabel`], whose
//! future is the handler's. The pipeline wraps the router once, not each route
//! (`app::router`).

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::response::Response;
use futures::future::BoxFuture;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
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
            body_limit: DefaultBodyLimit::max(self.state.config.max_body),
            state: self.state.clone(),
            peer: None,
            ip_cell: None,
        }
    }
}

#[derive(Clone)]
pub struct PipelineService<S> {
    inner: S,
    /// `max_body`, for axum's body extractors (`Bytes`, `Multipart`, …; a route may
    /// lift it with its own `DefaultBodyLimit`), set on requests that have a body.
    body_limit: DefaultBodyLimit,
    state: AppState,
    /// The client of this connection (see [`PipelineService::for_peer`]).
    peer: Option<IpAddr>,
    /// Its address's per-IP limiter cell, looked up once for the connection.
    ip_cell: Option<Arc<crate::ratelimit::IpCell>>,
}

impl<S> PipelineService<S> {
    /// The service for one connection from `peer`: its requests carry the address in
    /// their [`RequestCtx`] (no request extension of its own to allocate).
    pub fn for_peer(mut self, peer: IpAddr) -> Self {
        self.peer = Some(peer);
        self.ip_cell = self.state.ip_limiter.as_ref().map(|l| l.cell(peer));
        self
    }
}

impl<S> Service<Request> for PipelineService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = PipelineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // the service that was made ready is the one called; a fresh clone stays here
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        self.dispatch(inner, req)
    }
}

/// How `kie serve` calls it (`conn_guard::serve`): hyper's own service trait, so no
/// `Oneshot` per request. Only for the router, which is always ready (axum's
/// `Router::poll_ready` answers `Ready` unconditionally): each request takes its own
/// handle on it.
impl hyper::service::Service<axum::http::Request<hyper::body::Incoming>>
    for PipelineService<axum::Router>
{
    type Response = Response;
    type Error = Infallible;
    type Future = PipelineFuture<axum::routing::future::RouteFuture<Infallible>>;

    fn call(&self, req: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        self.dispatch(self.inner.clone(), req.map(axum::body::Body::new))
    }
}

impl<S> PipelineService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    /// Steps 1–5 of the module docs run here, before anything is awaited; `inner`'s
    /// own future (step 6) is held by [`PipelineFuture`], which does step 7 when it is
    /// ready.
    fn dispatch(&self, mut inner: S, mut req: Request) -> PipelineFuture<S::Future> {
        let started = Instant::now();
        let ctx = Arc::new(RequestCtx {
            id: request_id_from(req.headers()),
            peer: self.peer,
            ..Default::default()
        });
        req.extensions_mut().insert(ctx.clone());
        let method = req.method().clone();
        // a cheap clone (shared bytes); logged without its query string
        let uri = req.uri().clone();
        let state = &self.state;
        let path = uri.path();
        let refused = self
            .ip_cell
            .as_ref()
            .and_then(|cell| cell.check(path))
            .or_else(|| guard::api_refusal(state, path));
        let (answer, fired) = match refused {
            Some(r) => (Answer::Ready { answer: Some(r) }, None),
            None => {
                let (req, fired) =
                    crate::conn_guard::with_body_deadline(req, state.config.request_body_timeout);
                // the body limit, where there is a body to limit (the same future
                // either way: the limit is a request extension)
                let future = match fired {
                    Some(_) => self.body_limit.layer(inner).call(req),
                    None => inner.call(req),
                };
                let answer = match guard::db_watch(state, path) {
                    None => Answer::Routed { future },
                    // only on a database that can go down (PostgreSQL): one box
                    Some(watch) => Answer::Watched {
                        future: Box::pin(watch.run(future)),
                    },
                };
                (answer, fired)
            }
        };
        PipelineFuture {
            answer,
            way_out: Some(WayOut {
                state: self.state.clone(),
                ctx,
                method,
                uri,
                started,
                fired,
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of one request through [`Pipeline`]: the router's own future (no box
    /// on SQLite), then the way out (`http::finish`).
    pub struct PipelineFuture<F> {
        #[pin]
        answer: Answer<F>,
        way_out: Option<WayOut>,
    }
}

pin_project_lite::pin_project! {
    /// Where the answer comes from.
    #[project = AnswerProj]
    enum Answer<F> {
        /// Refused before the router (per-IP limit, maintenance).
        Ready { answer: Option<Response> },
        /// The router's future.
        Routed { #[pin] future: F },
        /// The router's future under the database watch (`guard::db_watch`).
        Watched { future: BoxFuture<'static, Response> },
    }
}

/// What step 7 needs once the answer is there.
struct WayOut {
    state: AppState,
    ctx: Arc<RequestCtx>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    started: Instant,
    /// The body deadline's flag (`None`: the request had no body to wait for).
    fired: Option<Arc<AtomicBool>>,
}

impl<F> Future for PipelineFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = match this.answer.project() {
            AnswerProj::Ready { answer } => answer.take().expect("polled after completion"),
            AnswerProj::Routed { future } => match ready!(future.poll(cx)) {
                Ok(r) => r,
                Err(never) => match never {},
            },
            AnswerProj::Watched { future } => ready!(future.as_mut().poll(cx)),
        };
        let w = this.way_out.take().expect("polled after completion");
        let resp = match w.fired {
            Some(f) if f.load(Ordering::Relaxed) => crate::http::body_timed_out(
                w.state.config.request_body_timeout,
                super::error::is_upload_path(w.uri.path()),
            ),
            _ => resp,
        };
        let route = w
            .ctx
            .route
            .get()
            .map(MatchedPath::as_str)
            .unwrap_or("unmatched");
        Poll::Ready(Ok(finish(
            &w.state.config,
            &w.ctx,
            &w.method,
            w.uri.path(),
            route,
            resp,
            w.started,
        )))
    }
}

/// Inside the router, on every route, once: the matched route pattern becomes the
/// request's label (metrics, request log), and the route's feature switch, when it has
/// one ([`guard::FeatureSwitch`], declared in the route table), answers 505 while the
/// operator has the feature off. Its future is the handler's own, or a ready answer.
/// The API's routes wrap each handler in it (`Handler::layer`, `api::routes`: no route
/// level of its own); the others take it as a route layer (`app::router`).
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
