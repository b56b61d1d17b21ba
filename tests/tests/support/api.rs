//! A JSON client of a running service's admin API, for the end-to-end tests.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::DEADLINE;

/// A client for one running service.
pub struct Api {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: String, token: String) -> Api {
        Api {
            base,
            token,
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    /// `POST` without a body.
    pub async fn post_empty(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::POST, path, None).await
    }

    pub async fn raw(&self, method: Method, path: &str, body: &'static str) -> (StatusCode, Value) {
        let res = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Polls an execution until `pred` holds.
    pub async fn wait_execution(
        &self,
        id: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let (s, e) = self.get(&format!("/api/executions/{id}")).await;
            assert_eq!(s, StatusCode::OK, "{e}");
            if pred(&e) {
                return e;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}: {e}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("{}/api/ws?{query}", self.base.replace("http://", "ws://"))
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }

    /// Polls `GET path` until `pred` holds.
    pub async fn wait(&self, path: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let (s, v) = self.get(path).await;
            if s == StatusCode::OK && pred(&v) {
                return v;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}: {s} {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a job now and waits until the run completed.
    pub async fn run_to_completion(&self, job: &str) {
        let (s, r) = self
            .post(&format!("/api/jobs/{job}/execute"), json!({}))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{r}");
        let id = r["execution_id"].as_str().unwrap().to_owned();
        self.wait(&format!("/api/executions/{id}"), "run completed", |e| {
            e["status"] == "completed"
        })
        .await;
    }

    pub async fn execution_count(&self, job: &str) -> u64 {
        let (s, page) = self.get(&format!("/api/jobs/{job}/executions")).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        page["total"].as_u64().unwrap()
    }
}
