//! Who is calling (session cookies, personal and admin bearer tokens, external
//! JWTs), and the `next` targets a login may redirect to.

pub mod cookies;
pub mod external;
pub mod handoff;
pub mod identity;
pub mod jwt;
pub mod next;
pub mod oidc;
pub mod password;
pub mod ratelimit;
pub mod session;

pub use identity::{Identities, Identity, IdentityHeaders, bearer};
pub use next::safe_next;
pub use session::SessionCodec;
