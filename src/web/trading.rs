//! The back-office trading API, behind the admin token. Bodies are JSON objects; decimals may be
//! given as strings (`"1.10250"`, preferred) or JSON numbers. Every refusal is a 4xx JSON error;
//! a 422 names the offending `field`. Nothing is written when a request is refused.
//!
//! - `GET  /admin/api/symbols`, `POST /admin/api/symbols`
//! - `POST /admin/api/accounts`
//! - `GET  /admin/api/positions?mt5_account_id=&symbol=&status=&after_id=&limit=`
//! - `POST /admin/api/positions`; `GET|PATCH /admin/api/positions/{id}`
//! - `POST /admin/api/positions/{id}/close`
//! - `PUT|DELETE /admin/api/positions/{id}/calm`
//! - `GET|PUT /admin/api/prices/{symbol}`

use std::{collections::HashMap, str::FromStr, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, Query, Request, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    middleware::Next,
    response::IntoResponse,
    routing::{get, post, put},
};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};

use super::{AppError, WebState};
use crate::trading::{Side, TradingError, calm, ops};

pub(super) fn router(token: Option<Arc<str>>) -> Router<WebState> {
    Router::new()
        .route("/admin/api/symbols", get(list_symbols).post(create_symbol))
        .route("/admin/api/accounts", post(create_account))
        .route(
            "/admin/api/positions",
            get(list_positions).post(open_position),
        )
        .route(
            "/admin/api/positions/{id}",
            get(get_position).patch(modify_position),
        )
        .route("/admin/api/positions/{id}/close", post(close_position))
        .route(
            "/admin/api/positions/{id}/calm",
            put(calm_on).delete(calm_off),
        )
        .route("/admin/api/prices/{symbol}", get(get_price).put(set_price))
        .route_layer(axum::middleware::from_fn(
            move |req: Request, next: Next| super::admin::require_admin(token.clone(), req, next),
        ))
}

impl From<TradingError> for AppError {
    fn from(e: TradingError) -> Self {
        match e {
            TradingError::Invalid { field, message } => Self::Invalid { field, message },
            TradingError::NotFound(m) => Self::NotFound(m),
            TradingError::Conflict(m) => Self::Status(StatusCode::CONFLICT, m),
            TradingError::Unavailable(m) => Self::Unavailable(m),
            TradingError::Internal(e) => Self::Internal(e),
        }
    }
}

/// A JSON object body whose fields are read one by one, each refusal naming its field.
pub(super) struct Body(Map<String, Value>);

impl Body {
    pub(super) fn parse(
        body: Result<Json<Value>, JsonRejection>,
        allowed: &[&'static str],
    ) -> Result<Self, AppError> {
        let Json(value) = body.map_err(|e| AppError::BadRequest(e.body_text()))?;
        let Value::Object(map) = value else {
            return Err(AppError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        };
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(AppError::Invalid {
                field: "body",
                message: format!("unknown field {unknown:?}; allowed: {}", allowed.join(", ")),
            });
        }
        Ok(Self(map))
    }

    /// `Some(None)` for an explicit `null`, `None` when absent.
    pub(super) fn nullable_decimal(
        &self,
        field: &'static str,
    ) -> Result<Option<Option<Decimal>>, AppError> {
        match self.0.get(field) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => decimal(field, v).map(|d| Some(Some(d))),
        }
    }

    pub(super) fn decimal(&self, field: &'static str) -> Result<Option<Decimal>, AppError> {
        Ok(self.nullable_decimal(field)?.flatten())
    }

    pub(super) fn required<T>(&self, field: &'static str, v: Option<T>) -> Result<T, AppError> {
        v.ok_or(AppError::Invalid {
            field,
            message: "is required".into(),
        })
    }

    pub(super) fn string(&self, field: &'static str) -> Result<Option<String>, AppError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(invalid(field, format!("must be a string, got {other}"))),
        }
    }

    pub(super) fn integer(&self, field: &'static str) -> Result<Option<i64>, AppError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| invalid(field, format!("must be an integer, got {n}"))),
            Some(Value::String(s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| invalid(field, format!("must be an integer, got {s:?}"))),
            Some(other) => Err(invalid(field, format!("must be an integer, got {other}"))),
        }
    }

    /// `Some(None)` for an explicit `null`, `None` when absent, else `read`.
    pub(super) fn nullable<T>(
        &self,
        field: &'static str,
        read: impl Fn(&Self, &'static str) -> Result<Option<T>, AppError>,
    ) -> Result<Option<Option<T>>, AppError> {
        match self.0.get(field) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(_) => read(self, field).map(Some),
        }
    }

    pub(super) fn boolean(&self, field: &'static str) -> Result<Option<bool>, AppError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(invalid(
                field,
                format!("must be true or false, got {other}"),
            )),
        }
    }

    pub(super) fn strings(&self, field: &'static str) -> Result<Option<Vec<String>>, AppError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_owned).ok_or_else(|| {
                        invalid(field, format!("must be a list of strings, got {v}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(invalid(
                field,
                format!("must be a list of strings, got {other}"),
            )),
        }
    }

    pub(super) fn integers(&self, field: &'static str) -> Result<Option<Vec<i64>>, AppError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_i64().ok_or_else(|| {
                        invalid(field, format!("must be a list of integers, got {v}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(invalid(
                field,
                format!("must be a list of integers, got {other}"),
            )),
        }
    }

    /// The field as given (validated by the operation).
    pub(super) fn raw(&self, field: &'static str) -> Option<Value> {
        self.0.get(field).filter(|v| !v.is_null()).cloned()
    }

    pub(super) fn timestamp(&self, field: &'static str) -> Result<Option<DateTime<Utc>>, AppError> {
        self.string(field)?
            .map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| invalid(field, format!("{s:?} is not ISO 8601: {e}")))
            })
            .transpose()
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> AppError {
    AppError::Invalid {
        field,
        message: message.into(),
    }
}

fn decimal(field: &'static str, v: &Value) -> Result<Decimal, AppError> {
    let raw = match v {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        other => {
            return Err(invalid(
                field,
                format!("must be a decimal string, got {other}"),
            ));
        }
    };
    Decimal::from_str(&raw)
        .or_else(|_| Decimal::from_scientific(&raw))
        .map_err(|_| invalid(field, format!("{raw:?} is not a decimal number")))
}

fn query_value<T: FromStr>(
    q: &HashMap<String, String>,
    field: &'static str,
) -> Result<Option<T>, AppError> {
    q.get(field)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse()
                .map_err(|_| invalid(field, format!("{v:?} is not valid here")))
        })
        .transpose()
}

fn position_id(raw: &str) -> Result<i64, AppError> {
    raw.parse()
        .map_err(|_| AppError::NotFound(format!("no position {raw:?}")))
}

async fn list_symbols(State(s): State<WebState>) -> Result<impl IntoResponse, AppError> {
    let symbols = crate::trading::symbols(&s.db)
        .await
        .map_err(TradingError::from)?;
    Ok(Json(json!({ "symbols": symbols })))
}

async fn create_symbol(
    State(s): State<WebState>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<impl IntoResponse, AppError> {
    let b = Body::parse(
        body,
        &["symbol", "digits", "contract_size", "quote_currency"],
    )?;
    let digits = b.required("digits", b.integer("digits")?)?;
    let new = ops::NewSymbol {
        symbol: b.required("symbol", b.string("symbol")?)?,
        digits: i16::try_from(digits).map_err(|_| invalid("digits", "must be between 0 and 10"))?,
        contract_size: b.required("contract_size", b.decimal("contract_size")?)?,
        quote_currency: b.required("quote_currency", b.string("quote_currency")?)?,
    };
    let created = ops::create_symbol(&s.db, new, &super::admin_actor(&headers)).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn create_account(
    State(s): State<WebState>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<impl IntoResponse, AppError> {
    let b = Body::parse(body, &["mt5_account_id", "currency", "balance"])?;
    let account = ops::create_account(
        &s.db,
        b.required("mt5_account_id", b.integer("mt5_account_id")?)?,
        &b.required("currency", b.string("currency")?)?,
        b.decimal("balance")?.unwrap_or_default(),
        &super::admin_actor(&headers),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(account)))
}

async fn list_positions(
    State(s): State<WebState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, AppError> {
    let allowed = ["mt5_account_id", "symbol", "status", "after_id", "limit"];
    if let Some(unknown) = q.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(invalid(
            "query",
            format!(
                "unknown parameter {unknown:?}; allowed: {}",
                allowed.join(", ")
            ),
        ));
    }
    let filter = ops::PositionFilter {
        mt5_account_id: query_value(&q, "mt5_account_id")?,
        symbol: query_value(&q, "symbol")?,
        status: query_value(&q, "status")?,
        after_id: query_value(&q, "after_id")?,
        limit: query_value(&q, "limit")?,
    };
    let positions = ops::list_positions(&s.db, &filter).await?;
    let next_after_id = positions.last().map(|p| p.id);
    Ok(Json(
        json!({ "positions": positions, "next_after_id": next_after_id }),
    ))
}

async fn get_position(
    State(s): State<WebState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    Ok(Json(ops::get_position(&s.db, position_id(&id)?).await?))
}

async fn open_position(
    State(s): State<WebState>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<impl IntoResponse, AppError> {
    let b = Body::parse(
        body,
        &[
            "mt5_account_id",
            "symbol",
            "side",
            "volume",
            "stop_loss",
            "take_profit",
            "open_price",
        ],
    )?;
    let side: Side = b
        .required("side", b.string("side")?)?
        .parse()
        .map_err(|m: String| invalid("side", m))?;
    let req = ops::OpenPosition {
        mt5_account_id: b.required("mt5_account_id", b.integer("mt5_account_id")?)?,
        symbol: b.required("symbol", b.string("symbol")?)?,
        side,
        volume: b.required("volume", b.decimal("volume")?)?,
        stop_loss: b.decimal("stop_loss")?,
        take_profit: b.decimal("take_profit")?,
        open_price: b.decimal("open_price")?,
    };
    let position = ops::open_position(&s.trading, req, &super::admin_actor(&headers)).await?;
    Ok((StatusCode::CREATED, Json(position)))
}

async fn modify_position(
    State(s): State<WebState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<impl IntoResponse, AppError> {
    let id = position_id(&id)?;
    let b = Body::parse(body, &["stop_loss", "take_profit"])?;
    let levels = ops::Levels {
        stop_loss: b.nullable_decimal("stop_loss")?,
        take_profit: b.nullable_decimal("take_profit")?,
    };
    if levels.stop_loss.is_none() && levels.take_profit.is_none() {
        return Err(invalid(
            "body",
            "give stop_loss and/or take_profit (null removes one)",
        ));
    }
    Ok(Json(
        ops::modify_position(&s.trading, id, levels, &super::admin_actor(&headers)).await?,
    ))
}

async fn close_position(
    State(s): State<WebState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, AppError> {
    Ok(Json(
        ops::close_position(&s.trading, position_id(&id)?, &super::admin_actor(&headers)).await?,
    ))
}

async fn calm_on(
    State(s): State<WebState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, AppError> {
    let id = position_id(&id)?;
    calm::enable(&s.trading, id, &super::admin_actor(&headers)).await?;
    Ok(Json(json!({ "position_id": id, "calm": true })))
}

async fn calm_off(
    State(s): State<WebState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    let id = position_id(&id)?;
    let was = calm::disable(&s.trading, id).await?;
    Ok(Json(
        json!({ "position_id": id, "calm": false, "was_calm": was }),
    ))
}

async fn get_price(
    State(s): State<WebState>,
    Path(symbol): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    let quote = ops::get_price(&s.trading, &symbol).await?;
    Ok(Json(json!({ "symbol": symbol, "quote": quote })))
}

async fn set_price(
    State(s): State<WebState>,
    Path(symbol): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<impl IntoResponse, AppError> {
    let b = Body::parse(body, &["bid", "ask", "timestamp", "seq"])?;
    let seq = b
        .integer("seq")?
        .map(|n| u64::try_from(n).map_err(|_| invalid("seq", "must not be negative")))
        .transpose()?;
    let quote = ops::set_price(
        &s.trading,
        &symbol,
        b.required("bid", b.decimal("bid")?)?,
        b.required("ask", b.decimal("ask")?)?,
        b.timestamp("timestamp")?,
        seq,
        &super::admin_actor(&headers),
    )
    .await?;
    Ok(Json(json!({ "symbol": symbol, "quote": quote })))
}
