//! Chat conversations: stored histories sent to the model with each new message and billed like
//! completions. `routes` holds the handlers, `store` every query on `conversations` and
//! `messages`.

mod routes;

pub use routes::{messages_router, router};
