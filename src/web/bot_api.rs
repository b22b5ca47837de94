//! REST for MT5 bots (seed 004), plus the admin API for accounts, strategies and central
//! commands.
//!
//! Bots authenticate with their API key as `Authorization: Bearer <key>`,
//! `Authorization: Api-Key <key>` or `X-API-Key: <key>`. Missing, unknown or revoked key: 401.
//! A key asking for another account: 403 (whether or not that account exists, so a key cannot
//! probe for accounts). Unknown account or strategy: 404. Every error is JSON.
//! `ETag` is the config version (`"7"`); `If-None-Match` with it answers 304 with no body.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{Path, Query, Request, State, rejection::JsonRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use serde_json::{Value, json};

use super::{AppError, WebState, trading::Body};
use crate::bots::{apikeys, commands, config, manage};

/// How long a verified API key is trusted without asking PostgreSQL again: a revocation takes
/// effect within this time.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);
const CACHE_MAX_ENTRIES: usize = 100_000;

/// The web process's cache of verified keys and rendered documents. A document is served from
/// the cache only while its version is at least the version published in Redis; publishing
/// happens after commit, so a bot that saw a new version in Redis always gets that version.
#[derive(Default)]
pub struct BotCache {
    keys: RwLock<HashMap<Vec<u8>, (i64, Instant)>>,
    docs: RwLock<HashMap<(i64, i64), (i64, Bytes)>>,
}

impl BotCache {
    fn key(&self, hash: &[u8]) -> Option<i64> {
        let keys = self.keys.read().ok()?;
        keys.get(hash)
            .filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL)
            .map(|(mt5, _)| *mt5)
    }

    fn remember_key(&self, hash: Vec<u8>, mt5: i64) {
        if let Ok(mut keys) = self.keys.write() {
            if keys.len() >= CACHE_MAX_ENTRIES {
                keys.clear();
            }
            keys.insert(hash, (mt5, Instant::now()));
        }
    }

    fn doc(&self, id: (i64, i64), at_least: i64) -> Option<(i64, Bytes)> {
        let docs = self.docs.read().ok()?;
        docs.get(&id).filter(|(v, _)| *v >= at_least).cloned()
    }

    fn remember_doc(&self, id: (i64, i64), version: i64, body: Bytes) {
        if let Ok(mut docs) = self.docs.write() {
            if docs.len() >= CACHE_MAX_ENTRIES {
                docs.clear();
            }
            if docs.get(&id).is_none_or(|(v, _)| *v <= version) {
                docs.insert(id, (version, body));
            }
        }
    }
}

/// The bots' routes (their own auth).
pub(super) fn bot_router() -> Router<WebState> {
    Router::new()
        .route("/api/bot/trade-config/{mt5}/", get(trade_config))
        .route("/api/bot/trade-config/{mt5}", get(trade_config))
        .route(
            "/api/bot/strategy-config/{mt5}/{strategy}/",
            get(strategy_config),
        )
        .route(
            "/api/bot/strategy-config/{mt5}/{strategy}",
            get(strategy_config),
        )
        .layer(Extension(Arc::new(BotCache::default())))
}

/// Admin routes for accounts, strategies and commands (admin token).
pub(super) fn admin_router(token: Option<Arc<str>>) -> Router<WebState> {
    Router::new()
        .route(
            "/admin/api/accounts/{mt5}",
            get(get_account).patch(patch_account),
        )
        .route(
            "/admin/api/accounts/{mt5}/strategies/{strategy}",
            put(put_account_strategy),
        )
        .route("/admin/api/strategies", post(create_strategy))
        .route("/admin/api/bots/commands", post(bot_command))
        .route("/admin/api/actions", get(actions))
        .route_layer(axum::middleware::from_fn(
            move |req: Request, next: Next| super::admin::require_admin(token.clone(), req, next),
        ))
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    auth.strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("Api-Key "))
        .map(str::trim)
}

/// Authenticate the bot and check its scope covers `mt5`.
async fn authorise(
    state: &WebState,
    cache: &BotCache,
    headers: &HeaderMap,
    mt5: &str,
) -> Result<i64, AppError> {
    let key = presented_key(headers)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| AppError::Status(StatusCode::UNAUTHORIZED, "bot API key required".into()))?;
    let hash = apikeys::hash(key);
    let owner = match cache.key(&hash) {
        Some(owner) => owner,
        None => {
            let owner = apikeys::verify(&state.db, key)
                .await
                .map_err(|e| AppError::Internal(e.into()))?
                .ok_or_else(|| {
                    AppError::Status(
                        StatusCode::UNAUTHORIZED,
                        "invalid or revoked API key".into(),
                    )
                })?;
            cache.remember_key(hash, owner);
            owner
        }
    };
    match mt5.parse::<i64>() {
        Ok(id) if id == owner => Ok(id),
        _ => Err(AppError::Status(
            StatusCode::FORBIDDEN,
            "this API key is not for that account".into(),
        )),
    }
}

/// Weak comparison of `If-None-Match` against the version's ETag.
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

fn versioned(headers: &HeaderMap, version: i64, body: Bytes) -> Response {
    let etag = format!("\"{version}\"");
    let mut response = if not_modified(headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response()
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The version published in Redis under `key` (0 when unknown or Redis is down).
async fn published(s: &WebState, key: String) -> i64 {
    let mut conn = s.redis.manager();
    redis::cmd("HGET")
        .arg(key)
        .arg("version")
        .query_async::<Option<i64>>(&mut conn)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

fn render(body: &Value) -> Result<Bytes, AppError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| AppError::Internal(e.into()))
}

async fn trade_config(
    State(s): State<WebState>,
    Extension(cache): Extension<Arc<BotCache>>,
    Path(mt5): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let mt5 = authorise(&s, &cache, &headers, &mt5).await?;
    let id = (mt5, 0);
    let at_least = published(&s, s.trading.keys.trade_config(mt5)).await;
    if at_least > 0
        && let Some((version, body)) = cache.doc(id, at_least)
    {
        return Ok(versioned(&headers, version, body));
    }
    let row = config::account(&s.db, mt5)
        .await
        .map_err(|e| AppError::Internal(e.into()))?
        .ok_or_else(|| AppError::NotFound(format!("no account {mt5}")))?;
    let body = render(&config::trade_config(&row))?;
    cache.remember_doc(id, row.trade_config_version, body.clone());
    Ok(versioned(&headers, row.trade_config_version, body))
}

async fn strategy_config(
    State(s): State<WebState>,
    Extension(cache): Extension<Arc<BotCache>>,
    Path((mt5, strategy)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let mt5 = authorise(&s, &cache, &headers, &mt5).await?;
    let strategy: i64 = strategy
        .parse()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| AppError::NotFound(format!("no strategy {strategy:?}")))?;
    let id = (mt5, strategy);
    let at_least = published(&s, s.trading.keys.strategy_config(mt5, strategy)).await;
    if at_least > 0
        && let Some((version, body)) = cache.doc(id, at_least)
    {
        return Ok(versioned(&headers, version, body));
    }
    let row = config::strategy(&s.db, mt5, strategy)
        .await
        .map_err(|e| AppError::Internal(e.into()))?
        .ok_or_else(|| {
            AppError::NotFound(format!(
                "account {mt5} has no settings for strategy {strategy}"
            ))
        })?;
    let body = render(&config::strategy_config(&row))?;
    cache.remember_doc(id, row.version, body.clone());
    Ok(versioned(&headers, row.version, body))
}

fn mt5_id(raw: &str) -> Result<i64, AppError> {
    raw.parse()
        .map_err(|_| AppError::NotFound(format!("no account {raw:?}")))
}

async fn get_account(
    State(s): State<WebState>,
    Path(mt5): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    Ok(Json(manage::account_view(&s.db, mt5_id(&mt5)?).await?))
}

async fn patch_account(
    State(s): State<WebState>,
    Path(mt5): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<impl IntoResponse, AppError> {
    let mt5 = mt5_id(&mt5)?;
    let b = Body::parse(
        body,
        &[
            "bot_status",
            "account_status",
            "subscription_status",
            "subscription_expiry",
            "enabled_symbols",
            "lot_size",
            "auto_pause_on_news",
            "dynamic_position_sizing_enabled",
            "dd_protection_enabled",
            "daily_dd_limit_percent",
            "max_account_dd_percent",
            "active_bot_id",
            "clear_dd_block",
        ],
    )?;
    let patch = manage::AccountPatch {
        bot_status: b.string("bot_status")?,
        account_status: b.string("account_status")?,
        subscription_status: b.string("subscription_status")?,
        subscription_expiry: b.nullable("subscription_expiry", |b, f| b.timestamp(f))?,
        enabled_symbols: b.strings("enabled_symbols")?,
        lot_size: b.decimal("lot_size")?,
        auto_pause_on_news: b.boolean("auto_pause_on_news")?,
        dynamic_position_sizing_enabled: b.boolean("dynamic_position_sizing_enabled")?,
        dd_protection_enabled: b.boolean("dd_protection_enabled")?,
        daily_dd_limit_percent: b.decimal("daily_dd_limit_percent")?,
        max_account_dd_percent: b.decimal("max_account_dd_percent")?,
        active_bot_id: b.nullable("active_bot_id", |b, f| b.integer(f))?,
        clear_dd_block: b.boolean("clear_dd_block")?.unwrap_or(false),
    };
    Ok(Json(
        manage::update_account(&s.trading, mt5, patch, &super::admin_actor(&headers)).await?,
    ))
}

async fn put_account_strategy(
    State(s): State<WebState>,
    Path((mt5, strategy)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<impl IntoResponse, AppError> {
    let mt5 = mt5_id(&mt5)?;
    let strategy: i64 = strategy
        .parse()
        .map_err(|_| AppError::NotFound(format!("no strategy {strategy:?}")))?;
    let b = Body::parse(
        body,
        &[
            "status",
            "allowed_symbols",
            "parameters_by_symbol",
            "optimization_config",
            "last_optimization_date",
        ],
    )?;
    let patch = manage::StrategyPatch {
        status: b.string("status")?,
        allowed_symbols: b.strings("allowed_symbols")?,
        parameters_by_symbol: b.raw("parameters_by_symbol"),
        optimization_config: b.raw("optimization_config"),
        last_optimization_date: b.nullable("last_optimization_date", |b, f| b.timestamp(f))?,
    };
    Ok(Json(
        manage::set_account_strategy(
            &s.trading,
            mt5,
            strategy,
            patch,
            &super::admin_actor(&headers),
        )
        .await?,
    ))
}

async fn create_strategy(
    State(s): State<WebState>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<impl IntoResponse, AppError> {
    let b = Body::parse(body, &["name", "strategy_class", "is_pair_trading"])?;
    let created = manage::create_strategy(
        &s.trading,
        &b.required("name", b.string("name")?)?,
        &b.required("strategy_class", b.string("strategy_class")?)?,
        b.boolean("is_pair_trading")?.unwrap_or(false),
        &super::admin_actor(&headers),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn bot_command(
    State(s): State<WebState>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<impl IntoResponse, AppError> {
    let b = Body::parse(body, &["command", "mt5_account_ids", "active_bot_id"])?;
    let command: commands::Command = b
        .required("command", b.string("command")?)?
        .parse()
        .map_err(|m: String| AppError::Invalid {
            field: "command",
            message: m,
        })?;
    let ids = b.integers("mt5_account_ids")?;
    let filter = commands::Filter {
        mt5_account_ids: ids,
        active_bot_id: b.integer("active_bot_id")?,
    };
    Ok(Json(
        commands::run(&s.trading, &super::admin_actor(&headers), command, &filter).await?,
    ))
}

async fn actions(
    State(s): State<WebState>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<impl IntoResponse, AppError> {
    let limit = q
        .get("limit")
        .map(|v| v.parse::<i64>())
        .transpose()
        .map_err(|_| AppError::Invalid {
            field: "limit",
            message: "must be an integer".into(),
        })?
        .unwrap_or(100);
    let rows = commands::recent_actions(&s.db, limit)
        .await
        .map_err(|e| AppError::Internal(e.into()))?;
    Ok(Json(json!({ "actions": rows })))
}
