//! The admin API: model rollouts, on a listener of its own (`admin.listen`), never the metrics
//! one: in Kubernetes `/metrics` is open to the cluster for Prometheus, and a model swap must not
//! be. Off unless `admin.listen` is set; beyond loopback it requires a bearer token.
//!
//! - `POST /admin/model`, body `{"path": "/models/gru4rec-ml100k", "mode": "step", "promote": true}`:
//!   loads and checks the candidate next to the live model, then promotes it (or, with
//!   `"promote": false`, only answers with its self-test).
//! - `POST /admin/model/rollback`: back to the model the last promotion replaced.
//!
//! Both answer with the outcome as JSON ([`crate::rollout::Outcome`]): 200 when done, 409 when
//! refused (the reason says why; the live model keeps serving), 401 without the token, 503 when
//! the pipeline is not running.

use std::net::SocketAddr;
use std::path::Path;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};

use crate::rollout::{Command, Outcome, RollRequest, Rollout};
use crate::shutdown::Shutdown;

/// Where the token comes from when `admin.token_file` is unset.
pub const TOKEN_ENV: &str = "LONGMEM_ADMIN_TOKEN";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin.listen {listen}: {message}")]
    Address { listen: String, message: String },
    #[error(
        "admin.listen {listen} is reachable beyond this machine, so the admin API needs a bearer \
         token: set admin.token_file (a file holding it) or {TOKEN_ENV}; or listen on 127.0.0.1"
    )]
    NoToken { listen: String },
    #[error("cannot read admin.token_file {path}: {error}")]
    TokenFile { path: String, error: std::io::Error },
    #[error("admin.token_file {path} is empty; write the token into it")]
    EmptyToken { path: String },
    #[error("cannot listen on admin.listen {listen}: {error}; choose a free port")]
    Bind {
        listen: String,
        error: std::io::Error,
    },
}

/// The token the API requires: from `token_file` if set, else from [`TOKEN_ENV`]; `None` for none.
/// Never logged.
pub fn load_token(token_file: Option<&Path>) -> Result<Option<String>, AdminError> {
    match token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| AdminError::TokenFile {
                path: path.display().to_string(),
                error,
            })?;
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(AdminError::EmptyToken {
                    path: path.display().to_string(),
                });
            }
            Ok(Some(token))
        }
        None => Ok(std::env::var(TOKEN_ENV)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())),
    }
}

#[derive(Clone)]
struct AdminState {
    rollout: Rollout,
    token: Option<String>,
}

/// Binds the admin address now (a taken port, or a public one without a token, is a start-up
/// error) and returns the server future.
pub async fn bind(
    listen: &str,
    token: Option<String>,
    rollout: Rollout,
    shutdown: Shutdown,
) -> Result<impl std::future::Future<Output = std::io::Result<()>>, AdminError> {
    let addr: SocketAddr = listen.parse().map_err(|e| AdminError::Address {
        listen: listen.to_string(),
        message: format!("{e}; give ip:port, for example 127.0.0.1:9465"),
    })?;
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(AdminError::NoToken {
            listen: listen.to_string(),
        });
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| AdminError::Bind {
            listen: listen.to_string(),
            error,
        })?;
    let app = Router::new()
        .route("/admin/model", post(roll))
        .route("/admin/model/rollback", post(rollback))
        .with_state(AdminState { rollout, token });
    Ok(async move {
        let mut stop = shutdown;
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.wait().await })
            .await
    })
}

type Answer = (StatusCode, Json<serde_json::Value>);

fn refuse(status: StatusCode, message: &str) -> Answer {
    (status, Json(serde_json::json!({ "error": message })))
}

/// The bearer token check, in constant time over the token's length.
fn authorized(state: &AdminState, headers: &HeaderMap) -> bool {
    let Some(expected) = &state.token else {
        return true;
    };
    let Some(given) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn answer(outcome: Option<Outcome>) -> Answer {
    match outcome {
        None => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the pipeline is not running (starting or stopping); ask again",
        ),
        Some(outcome) => {
            let status = if outcome.result == "refused" {
                StatusCode::CONFLICT
            } else {
                StatusCode::OK
            };
            (
                status,
                Json(serde_json::to_value(&outcome).expect("outcomes serialize")),
            )
        }
    }
}

async fn roll(State(state): State<AdminState>, headers: HeaderMap, body: String) -> Answer {
    if !authorized(&state, &headers) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        );
    }
    let request: RollRequest = match serde_json::from_str(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!(
                    "the body must be JSON like {{\"path\": \"/models/x\", \"mode\": \"step\", \"promote\": true}}: {e}"
                ),
            )
        }
    };
    answer(state.rollout.ask(Command::Roll(request)).await)
}

async fn rollback(State(state): State<AdminState>, headers: HeaderMap) -> Answer {
    if !authorized(&state, &headers) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        );
    }
    answer(state.rollout.ask(Command::Rollback).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(token: Option<&str>) -> AdminState {
        AdminState {
            rollout: Rollout::new().0,
            token: token.map(str::to_string),
        }
    }

    fn bearer(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn only_the_exact_bearer_token_is_let_in() {
        let s = state(Some("s3cret"));
        assert!(authorized(&s, &bearer("Bearer s3cret")));
        assert!(!authorized(&s, &bearer("Bearer s3cre")));
        assert!(!authorized(&s, &bearer("Bearer s3cretx")));
        assert!(!authorized(&s, &bearer("s3cret")));
        assert!(!authorized(&s, &HeaderMap::new()));
        assert!(
            authorized(&state(None), &HeaderMap::new()),
            "loopback without a token"
        );
    }

    #[tokio::test]
    async fn a_public_address_without_a_token_is_refused_at_start() {
        let e = bind("0.0.0.0:0", None, Rollout::new().0, Shutdown::new())
            .await
            .err()
            .expect("refused");
        assert!(matches!(e, AdminError::NoToken { .. }), "{e}");
        assert!(e.to_string().contains(TOKEN_ENV));
        assert!(bind("127.0.0.1:0", None, Rollout::new().0, Shutdown::new())
            .await
            .is_ok());
    }
}
