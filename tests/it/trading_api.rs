//! The back-office trading API (HTTP) and its CLI twin: valid changes land, invalid input is a
//! 4xx naming the field and writes nothing.

use std::time::Duration;

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt as _;

use crate::{
    helpers::pool,
    trading::{quote, seed, trading},
};

const TOKEN: &str = "test-admin-token-0123456789";

fn state(db: PgPool, t: halol::trading::Trading) -> halol::web::WebState {
    halol::web::WebState {
        redis: t.redis.clone(),
        trading: t,
        db,
        queue: crate::helpers::settings(|_| {}),
        admin_token: Some(std::sync::Arc::from(TOKEN)),
        metrics: None,
    }
}

async fn call(
    state: &halol::web::WebState,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header("x-admin-actor", "dana");
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("request");
    let (status, _, body) = crate::helpers::call_router(state.clone(), req).await;
    (status, body)
}

async fn positions(db: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM positions")
        .fetch_one(db)
        .await
        .expect("count")
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn positions_open_modify_list_and_close_through_the_admin_api(db: PgPool) {
    let t = trading(db.clone(), pool().await);
    seed(&t).await;
    let s = state(db.clone(), t.clone());
    quote(&t, "EURUSD", "1.10000", "1.10020").await;

    let (status, p) = call(
        &s,
        "POST",
        "/admin/api/positions",
        Some(
            json!({"mt5_account_id": 1001, "symbol": "EURUSD", "side": "buy",
                    "volume": "0.5", "stop_loss": "1.09", "take_profit": 1.12}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    assert_eq!(p["open_price"], "1.10020", "a buy opens at the ask");
    assert_eq!(
        p["stop_loss"], "1.09000",
        "normalised to the symbol's digits"
    );
    assert_eq!(p["take_profit"], "1.12000");
    let id = p["id"].as_i64().expect("id");

    let (status, p) = call(
        &s,
        "PATCH",
        &format!("/admin/api/positions/{id}"),
        Some(json!({"stop_loss": "1.095", "take_profit": null})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(
        (p["stop_loss"].clone(), p["take_profit"].clone()),
        (json!("1.09500"), Value::Null)
    );

    let (status, list) = call(
        &s,
        "GET",
        "/admin/api/positions?mt5_account_id=1001&symbol=EURUSD&status=open",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["positions"].as_array().map(Vec::len), Some(1));
    let (_, none) = call(&s, "GET", "/admin/api/positions?mt5_account_id=2002", None).await;
    assert_eq!(none["positions"].as_array().map(Vec::len), Some(0));

    // Manual close at the market (the bid for a buy).
    quote(&t, "EURUSD", "1.10120", "1.10140").await;
    let (status, p) = call(
        &s,
        "POST",
        &format!("/admin/api/positions/{id}/close"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(
        (
            p["status"].clone(),
            p["close_reason"].clone(),
            p["close_price"].clone()
        ),
        (json!("closed"), json!("manual"), json!("1.10120"))
    );
    // (1.10120 − 1.10020) × 0.5 × 100000 = 50.
    assert_eq!(p["realised_pnl"], "50.00");
    let (status, body) = call(
        &s,
        "POST",
        &format!("/admin/api/positions/{id}/close"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = call(
        &s,
        "PATCH",
        &format!("/admin/api/positions/{id}"),
        Some(json!({"stop_loss": "1.0"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = call(&s, "GET", "/admin/api/positions/999999", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Who did what: the open and the change in the audit log (with the levels replaced), the
    // manual close in its close record; the refused change left nothing.
    let audit: Vec<(String, String, Value, Value)> =
        sqlx::query_as("SELECT actor, action, target, detail FROM admin_actions ORDER BY id")
            .fetch_all(&db)
            .await
            .expect("audit");
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|(who, what, _, _)| (who.as_str(), what.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("admin:dana", "open_position"),
            ("admin:dana", "modify_position")
        ]
    );
    assert_eq!(audit[0].2["position_id"], id);
    assert_eq!(audit[0].3["stop_loss"], "1.09000");
    assert_eq!(
        audit[1].3,
        json!({
            "before": {"stop_loss": "1.09000", "take_profit": "1.12000"},
            "after": {"stop_loss": "1.09500", "take_profit": null},
        })
    );
    let closed_by: String =
        sqlx::query_scalar("SELECT closed_by FROM position_closes WHERE position_id = $1")
            .bind(id)
            .fetch_one(&db)
            .await
            .expect("close record");
    assert_eq!(closed_by, "admin:dana");
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn invalid_input_is_a_4xx_naming_the_field_and_writes_nothing(db: PgPool) {
    let t = trading(db.clone(), pool().await);
    seed(&t).await;
    let s = state(db.clone(), t.clone());
    quote(&t, "EURUSD", "1.10000", "1.10020").await;
    let base = json!({"mt5_account_id": 1001, "symbol": "EURUSD", "side": "buy", "volume": "0.1"});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    for (body, field) in [
        (with("symbol", json!("NOPE")), "symbol"),
        (with("volume", json!("-1")), "volume"),
        (with("volume", json!("0")), "volume"),
        (with("volume", json!("1.2.3")), "volume"),
        // Far above any order, and where PnL arithmetic could overflow.
        (with("volume", json!("10000.0001")), "volume"),
        (with("volume", json!("1e26")), "volume"),
        (with("side", json!("long")), "side"),
        (with("mt5_account_id", json!(424242)), "mt5_account_id"),
        // A long's SL must lie below the bid, its TP above it.
        (with("stop_loss", json!("1.10000")), "stop_loss"),
        (with("stop_loss", json!("1.10010")), "stop_loss"),
        (with("take_profit", json!("1.09")), "take_profit"),
        (with("stop_loss", json!("1.0999991")), "stop_loss"),
        (with("stop_loss", json!("abc")), "stop_loss"),
        (with("colour", json!("red")), "body"),
    ] {
        let (status, err) = call(&s, "POST", "/admin/api/positions", Some(body.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} -> {err}");
        assert_eq!(err["field"], field, "{body} -> {err}");
        assert!(
            err["error"].as_str().is_some_and(|e| e.starts_with(field)),
            "{err}"
        );
    }
    // A short's SL must lie above the ask.
    let (status, err) = call(
        &s,
        "POST",
        "/admin/api/positions",
        Some(
            with("side", json!("sell"))
                .as_object()
                .cloned()
                .map(|mut o| {
                    o.insert("stop_loss".into(), json!("1.10010"));
                    Value::Object(o)
                })
                .expect("object"),
        ),
    )
    .await;
    assert_eq!(
        (status, err["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("stop_loss"))
    );
    let (status, _) = call(&s, "POST", "/admin/api/positions", Some(json!([1, 2]))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(positions(&db).await, 0, "nothing written");

    // Prices: crossed, non-positive, too many digits, unknown symbol.
    for (body, field) in [
        (json!({"bid": "1.2", "ask": "1.1"}), "ask"),
        (json!({"bid": "-1", "ask": "1.1"}), "bid"),
        (json!({"bid": "1.1000001", "ask": "1.2"}), "bid"),
        (
            json!({"bid": "1.1", "ask": "1.2", "timestamp": "yesterday"}),
            "timestamp",
        ),
        // Every reader would refuse a quote from the future as malformed.
        (
            json!({"bid": "1.1", "ask": "1.2", "timestamp": "2099-01-01T00:00:00Z"}),
            "timestamp",
        ),
        // The write script compares sequence numbers as doubles: 2^53 would be rounded.
        (
            json!({"bid": "1.1", "ask": "1.2", "seq": 9_007_199_254_740_992_u64}),
            "seq",
        ),
        (json!({"bid": "1.1", "ask": "2000000000"}), "ask"),
    ] {
        let (status, err) = call(&s, "PUT", "/admin/api/prices/EURUSD", Some(body.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} -> {err}");
        assert_eq!(err["field"], field, "{body} -> {err}");
    }
    let (status, _) = call(
        &s,
        "PUT",
        "/admin/api/prices/NOPE",
        Some(json!({"bid": "1.1", "ask": "1.2"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, cached) = call(&s, "GET", "/admin/api/prices/EURUSD", None).await;
    assert_eq!(
        cached["quote"]["bid"], "1.10000",
        "the refused writes changed nothing"
    );
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM admin_actions")
        .fetch_one(&db)
        .await
        .expect("audit");
    assert_eq!(audited, 0, "a refused request leaves no audit row");

    // SL/TP cannot be checked without a fresh price: refused, not guessed.
    let (status, err) = call(
        &s,
        "POST",
        "/admin/api/positions",
        Some(
            json!({"mt5_account_id": 1001, "symbol": "GBPUSD", "side": "buy",
                    "volume": "0.1", "stop_loss": "1.2"}),
        ),
    )
    .await;
    assert_eq!(
        (status, err["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("stop_loss"))
    );
    assert_eq!(positions(&db).await, 0);

    // A level on its side of the market but past the level that stays: 422, not a 500 from
    // the schema's CHECK. (The market ran up through the TP before the sweep closed it.)
    let (status, opened) = call(
        &s,
        "POST",
        "/admin/api/positions",
        Some(
            json!({"mt5_account_id": 1001, "symbol": "EURUSD", "side": "buy",
                    "volume": "0.1", "stop_loss": "1.09000", "take_profit": "1.10100"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{opened}");
    quote(&t, "EURUSD", "1.10300", "1.10320").await;
    let uri = format!("/admin/api/positions/{}", opened["id"]);
    let (status, err) = call(&s, "PATCH", &uri, Some(json!({"stop_loss": "1.10200"}))).await;
    assert_eq!(
        (status, err["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("stop_loss")),
        "{err}"
    );
    let (_, kept) = call(&s, "GET", &uri, None).await;
    assert_eq!(kept["stop_loss"], "1.09000", "{kept}");
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn prices_and_calm_mode_through_the_admin_api(db: PgPool) {
    let t = trading(db.clone(), pool().await);
    seed(&t).await;
    let s = state(db.clone(), t.clone());
    let (status, q) = call(
        &s,
        "PUT",
        "/admin/api/prices/EURUSD",
        Some(json!({"bid": "1.1", "ask": "1.1002", "seq": 5})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{q}");
    assert_eq!(
        (q["quote"]["bid"].clone(), q["quote"]["seq"].clone()),
        (json!("1.10000"), json!(5))
    );
    let (status, err) = call(
        &s,
        "PUT",
        "/admin/api/prices/EURUSD",
        Some(json!({"bid": "1.1", "ask": "1.1002", "seq": 4})),
    )
    .await;
    assert_eq!(
        (status, err["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("seq"))
    );
    // A manual price can close positions: the stored write is audited, the refused one not.
    let prices: Vec<(String, Value)> = sqlx::query_as(
        "SELECT actor, detail FROM admin_actions WHERE action = 'set_price' ORDER BY id",
    )
    .fetch_all(&db)
    .await
    .expect("audit");
    assert_eq!(prices.len(), 1, "{prices:?}");
    assert_eq!(
        (
            prices[0].0.as_str(),
            &prices[0].1["bid"],
            &prices[0].1["seq"]
        ),
        ("admin:dana", &json!("1.10000"), &json!(5))
    );

    let (_, p) = call(
        &s,
        "POST",
        "/admin/api/positions",
        Some(json!({"mt5_account_id": 1001, "symbol": "EURUSD", "side": "sell", "volume": 1})),
    )
    .await;
    let id = p["id"].as_i64().expect("id");
    let (status, body) = call(&s, "PUT", &format!("/admin/api/positions/{id}/calm"), None).await;
    assert_eq!(
        (status, body["calm"].clone()),
        (StatusCode::OK, json!(true)),
        "{body}"
    );
    let exists: bool = redis::AsyncCommands::exists(&mut t.redis.manager(), t.keys.calm(id))
        .await
        .expect("exists");
    assert!(exists);
    let (status, body) = call(
        &s,
        "DELETE",
        &format!("/admin/api/positions/{id}/calm"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["was_calm"].clone()),
        (StatusCode::OK, json!(true))
    );
    let (status, _) = call(&s, "PUT", "/admin/api/positions/999/calm", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Without the token: 401, JSON.
    let req = Request::get("/admin/api/positions")
        .body(Body::empty())
        .expect("req");
    let response = halol::web::router(s.clone(), Duration::from_secs(5), 1024)
        .oneshot(req)
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn the_cli_refuses_bad_input_with_a_message_and_a_non_zero_exit(db: PgPool) {
    let t = trading(db.clone(), pool().await);
    seed(&t).await;
    quote(&t, "EURUSD", "1.10000", "1.10020").await;
    let options = db.connect_options();
    let url = format!(
        "postgres://postgres@127.0.0.1:5432/{}",
        options.get_database().expect("test database name")
    );
    let namespace = t.keys.price("");
    let namespace = namespace.trim_end_matches("price:").to_owned();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_halol"))
            .args(args)
            .env("DATABASE_URL", &url)
            .env("REDIS_URL", crate::helpers::redis_url())
            .env("REDIS_KEY_NAMESPACE", &namespace)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run halol")
    };
    let out = run(&[
        "position",
        "open",
        "--account",
        "1001",
        "--symbol",
        "EURUSD",
        "--side",
        "buy",
        "--volume",
        "0.1",
        "--sl",
        "1.2",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stop_loss"), "{stderr}");
    let out = run(&[
        "position",
        "open",
        "--account",
        "1001",
        "--symbol",
        "EURUSD",
        "--side",
        "buy",
        "--volume",
        "x",
    ]);
    assert!(!out.status.success());
    assert_eq!(positions(&db).await, 0);

    let out = run(&[
        "position",
        "open",
        "--account",
        "1001",
        "--symbol",
        "EURUSD",
        "--side",
        "buy",
        "--volume",
        "0.1",
        "--sl",
        "1.09",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(p["stop_loss"], "1.09000");
    let out = run(&["price", "set", "EURUSD", "--bid", "1.2", "--ask", "1.1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ask"));
}
