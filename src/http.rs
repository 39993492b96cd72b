//! HTTP plumbing shared by registry requests and token requests: bounded
//! reads of response bodies, and error answers turned into readable text.

/// Reads at most `limit` bytes of a response body; more is an error.
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> std::result::Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Request)? {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLong(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Why a response body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Request(reqwest::Error),
    #[error("the answer is longer than {0} bytes")]
    TooLong(usize),
}

/// What an error answer says: the `details`, `error_description`, `error`
/// or `errors[].message` of a JSON body, else its text, shortened.
pub(crate) fn reason(body: &[u8]) -> String {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        let messages: Vec<&str> = json["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["message"].as_str().or(e["code"].as_str()))
            .chain(
                ["details", "error_description", "error", "message"]
                    .iter()
                    .filter_map(|key| json[key].as_str()),
            )
            .collect();
        if !messages.is_empty() {
            return messages.join("; ");
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None if text.is_empty() => "(no reason given)".to_owned(),
        None => text.to_owned(),
    }
}

/// An error and its causes on one line: reqwest's own message alone hides
/// whether the connection was refused, reset or failed TLS.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        assert_eq!(reason(br#"{"details":"bad password"}"#), "bad password");
        assert_eq!(
            reason(br#"{"errors":[{"code":"DENIED","message":"no"}]}"#),
            "no"
        );
        assert_eq!(reason(b"  plain text \n"), "plain text");
        assert_eq!(reason(b""), "(no reason given)");
    }
}
