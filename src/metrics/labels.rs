//! The fixed label values of spawngate's metrics: one enum per label, whose
//! variant is also the index of its pre-resolved series.

/// A fixed set of label values: the enum, its `ALL` (in declaration order, so a
/// variant's `as usize` is its index) and its label text.
macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
    };
}

label_values! {
    /// forwardAuth's decisions (its log lines' `outcome`).
    AuthOutcome {
        Allow => "allow",
        Starting => "starting",
        NoSession => "no_session",
        Forbidden => "forbidden",
        UnknownSlug => "unknown_slug",
        AppFailed => "app_failed",
        SpawnFailed => "spawn_failed",
        StoreUnavailable => "store_unavailable",
        LookalikeHeader => "lookalike_header",
        Other => "other",
    }
}

impl AuthOutcome {
    /// The outcome named `s`; an unknown name counts as `other`.
    pub fn parse(s: &str) -> AuthOutcome {
        // The common answers first: this runs on every forwardAuth request.
        match s {
            "allow" => AuthOutcome::Allow,
            "starting" => AuthOutcome::Starting,
            _ => AuthOutcome::ALL
                .iter()
                .copied()
                .find(|o| o.as_str() == s)
                .unwrap_or(AuthOutcome::Other),
        }
    }
}

label_values! {
    /// How a container was made ready.
    SpawnKind {
        /// A new container.
        Create => "create",
        /// An existing, stopped container started again.
        Resume => "resume",
        /// A paused container thawed.
        Unpause => "unpause",
        /// A warm pool spare handed over.
        Pool => "pool",
    }
}

label_values! {
    /// Why a start failed.
    SpawnFailure {
        ImageMissing => "image_missing",
        AppExited => "app_exited",
        AppNotListening => "app_not_listening",
        Capacity => "capacity",
        DockerUnreachable => "docker_unreachable",
        Other => "other",
    }
}

label_values! {
    /// What the culler (or a full server) did to an idle container.
    CullTier {
        Pause => "pause",
        Stop => "stop",
        Remove => "remove",
    }
}

label_values! {
    CullReason {
        Idle => "idle",
        MaxLifetime => "max_lifetime",
        /// The least recently used one, stopped to make room (`limits.cull_lru_when_full`).
        Capacity => "capacity",
    }
}

label_values! {
    /// The runtime's operations (each a Docker API call or a few).
    RuntimeOp {
        Ping => "ping",
        ImagePresent => "image_present",
        EnsureRunning => "ensure_running",
        EnsureCreated => "ensure_created",
        Inspect => "inspect",
        Stop => "stop",
        Pause => "pause",
        List => "list",
        NetworkBytes => "network_bytes",
        Logs => "logs",
        Stats => "stats",
        Exec => "exec",
        ExecResize => "exec_resize",
        ExecExitCode => "exec_exit_code",
        PortAddress => "port_address",
        Remove => "remove",
        AdoptPooled => "adopt_pooled",
        Resources => "resources",
        RemoveResource => "remove_resource",
        Events => "events",
    }
}

label_values! {
    /// How someone tried to sign in (or, for tokens and JWTs, to authenticate a
    /// request).
    LoginMethod {
        /// A sign-in link confirmed.
        Link => "link",
        /// A sign-in link asked for by email.
        Email => "email",
        Password => "password",
        Oidc => "oidc",
        /// An external IdP's JWT on a forwardAuth request.
        Jwt => "jwt",
        /// A personal API token on a forwardAuth request.
        Token => "token",
    }
}

label_values! {
    /// Which sign-in rate limit refused a request.
    RateLimit {
        Address => "address",
        Email => "email",
        Password => "password",
    }
}

label_values! {
    /// Environment states as the lifecycle sees them.
    EnvState {
        Unknown => "unknown",
        Starting => "starting",
        Ready => "ready",
        Paused => "paused",
        Stopped => "stopped",
        Failed => "failed",
    }
}
