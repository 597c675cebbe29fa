//! The backend-relevant end-to-end tests again, on the Swarm backend: each user
//! environment a Swarm service on a single-node swarm, through real Traefik.
//! The bodies are the Docker backend's (see each `…_on`).

use crate::harness::Backend::Swarm;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_login_lands_on_own_service_with_prefix_stripped() {
    crate::e2e::login_link_lands_on_own_container_with_prefix_stripped_and_no_credentials_on(Swarm)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_another_users_cookie_is_forbidden() {
    crate::e2e::another_users_cookie_is_forbidden_exactly_like_an_unknown_slug_on(Swarm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_twenty_concurrent_first_requests_make_one_service_and_one_task() {
    crate::e2e::twenty_concurrent_first_requests_create_exactly_one_container_on(Swarm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_idle_service_is_scaled_to_zero_and_resumes_with_its_data() {
    crate::lifecycle::idle_container_is_stopped_and_resumes_with_its_data_on(Swarm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_a_service_removed_by_hand_is_recreated_by_the_next_request() {
    crate::lifecycle::a_container_removed_by_hand_is_recreated_by_the_next_request_on(Swarm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_a_restarted_spawngate_adopts_running_services() {
    crate::lifecycle::a_restarted_spawngate_adopts_running_containers_without_restarting_them_on(
        Swarm,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_a_users_task_cannot_reach_another_users_task_or_spawngate() {
    crate::lifecycle::a_users_container_cannot_reach_another_users_container_or_spawngate_on(Swarm)
        .await;
}
