//! Chat conversations: stored histories sent to the model with each new message and billed like
//! completions. `routes` holds the handlers, `store` every query on `conversations` and
//! `messages`.

mod routes;
pub mod store;

use std::sync::Arc;

use axum::extract::FromRef;
use sqlx::PgPool;

pub use self::routes::{messages_router, router};
use crate::{billing::Billing, llm::catalog::Catalog, state::AppState};

/// What the conversation routes use (the model call itself takes the LLM engine's state).
#[derive(Clone)]
pub struct ConversationsState {
    pub db: PgPool,
    pub catalog: Arc<Catalog>,
    /// A user without credit may not start a conversation.
    pub billing: Billing,
    pub limits: ConversationLimits,
}

/// The `PR_MAX_*` bounds on what a user may store in conversations.
#[derive(Clone, Copy, Debug)]
pub struct ConversationLimits {
    pub max_conversations_per_user: u32,
    pub max_messages_per_conversation: u32,
    pub max_message_chars: usize,
    pub max_system_prompt_chars: usize,
    pub max_title_chars: usize,
}

impl FromRef<AppState> for ConversationsState {
    fn from_ref(app: &AppState) -> Self {
        let c = &app.config;
        Self {
            db: app.db.clone(),
            catalog: app.catalog.clone(),
            billing: app.billing.clone(),
            limits: ConversationLimits {
                max_conversations_per_user: c.max_conversations_per_user,
                max_messages_per_conversation: c.max_messages_per_conversation,
                max_message_chars: c.max_message_chars,
                max_system_prompt_chars: c.max_system_prompt_chars,
                max_title_chars: c.max_title_chars,
            },
        }
    }
}
