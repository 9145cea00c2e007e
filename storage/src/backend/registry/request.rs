//! One request to the upstream, authenticated: up front with what is known to work (a
//! configured token, basic credentials the registry asked for before, a cached bearer
//! token of the scope), and once more after a `401` with what its challenge asks for.

use std::sync::atomic::Ordering;

use reqwest::{Method, StatusCode, header};

use super::auth::{Challenge, Credentials, Secret};
use super::errors::{
    BadResponse, Context, ErrorBody, MAX_ERROR_BODY, bad_response, map_status, transport,
};
use super::{MANIFEST_MEDIA_TYPES, RegistryStore};
use crate::backend::BackendError;

/// What a request carries in `Authorization`.
#[derive(Debug, Clone)]
enum Auth {
    None,
    Basic,
    Bearer(Secret),
}

/// The token endpoint's answer (the token spec; `access_token` is the OAuth2 name).
#[derive(serde::Deserialize)]
struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl RegistryStore {
    /// Sends `method` to `/v2/<path>` (with the manifest `Accept` list if `manifest`)
    /// and returns the answer, whatever its status; a `401` is answered once. Only
    /// transport and authentication failures are errors here.
    pub(super) async fn send(
        &self,
        cx: Context<'_>,
        method: Method,
        path: &str,
        manifest: bool,
    ) -> Result<reqwest::Response, BackendError> {
        let url = format!("{}/v2/{path}", self.url);
        let scope = format!("repository:{}:pull", cx.repository);
        let mut auth = self.first_auth(&scope);
        let mut answered = false;
        loop {
            let mut request = self.http.request(method.clone(), &url);
            if manifest {
                request = request.header(header::ACCEPT, MANIFEST_MEDIA_TYPES.join(", "));
            }
            let response = self
                .authorize(request, &auth)
                .send()
                .await
                .map_err(|e| transport(cx, e))?;
            if response.status() != StatusCode::UNAUTHORIZED || answered {
                return Ok(response);
            }
            answered = true;
            let challenge = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(Challenge::parse);
            match self.answer(cx, &scope, challenge, &auth).await? {
                Some(next) => auth = next,
                None => return Ok(response),
            }
        }
    }

    /// What to send before the registry has said anything about this request.
    fn first_auth(&self, scope: &str) -> Auth {
        match &self.credentials {
            Credentials::Token(token) => Auth::Bearer(token.clone()),
            Credentials::Basic { .. } if self.basic_asked.load(Ordering::Relaxed) => Auth::Basic,
            _ => self.tokens.peek(scope).map_or(Auth::None, Auth::Bearer),
        }
    }

    fn authorize(&self, request: reqwest::RequestBuilder, auth: &Auth) -> reqwest::RequestBuilder {
        match (auth, &self.credentials) {
            (Auth::Bearer(token), _) => request.bearer_auth(token.expose()),
            (Auth::Basic, Credentials::Basic { username, password }) => {
                request.basic_auth(username, Some(password.expose()))
            }
            _ => request,
        }
    }

    /// How to answer `challenge` after `sent` was refused; `None` if nothing we have
    /// can (the `401` then stands).
    async fn answer(
        &self,
        cx: Context<'_>,
        scope: &str,
        challenge: Option<Challenge>,
        sent: &Auth,
    ) -> Result<Option<Auth>, BackendError> {
        match (challenge, &self.credentials) {
            (Some(Challenge::Basic), Credentials::Basic { .. }) if !matches!(sent, Auth::Basic) => {
                self.basic_asked.store(true, Ordering::Relaxed);
                Ok(Some(Auth::Basic))
            }
            (
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope: asked,
                }),
                Credentials::Anonymous | Credentials::Basic { .. },
            ) => {
                let refused = match sent {
                    Auth::Bearer(token) => Some(token),
                    _ => None,
                };
                let asked = asked.as_deref().unwrap_or(scope);
                let token = self
                    .tokens
                    .get(scope, refused, || {
                        self.fetch_token(cx, &realm, service.as_deref(), asked)
                    })
                    .await?;
                Ok(Some(Auth::Bearer(token)))
            }
            _ => Ok(None),
        }
    }

    /// A token for `scope` from `realm`, with basic credentials if we have them; and
    /// its lifetime in seconds.
    async fn fetch_token(
        &self,
        cx: Context<'_>,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(Secret, u64), BackendError> {
        let cx = Context { op: "token", ..cx };
        let mut query = vec![("scope", scope)];
        query.extend(service.map(|s| ("service", s)));
        let request = match reqwest::Url::parse(realm) {
            Ok(mut url) => {
                url.query_pairs_mut().extend_pairs(&query);
                self.http.get(url)
            }
            // An invalid realm then fails in `send`, as the client's error naming it.
            Err(_) => self.http.get(realm),
        };
        let auth = match self.credentials {
            Credentials::Basic { .. } => Auth::Basic,
            _ => Auth::None,
        };
        let mut response = self
            .authorize(request, &auth)
            .send()
            .await
            .map_err(|e| transport(cx, e))?;
        let status = response.status();
        if !status.is_success() {
            let body = ErrorBody::read(response).await;
            return Err(map_status(cx, status.as_u16(), &body));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| transport(cx, e))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_ERROR_BODY * 4 {
                break;
            }
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| bad_response(cx, BadResponse::TokenJson(e)))?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad_response(cx, BadResponse::NoToken))?;
        let lifetime = answer.expires_in.unwrap_or(super::auth::DEFAULT_TOKEN_SECS);
        Ok((Secret::new(&token), lifetime))
    }
}
