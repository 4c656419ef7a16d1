use test_support::on_both_backends;
use test_support::{assert_error, content, Backend, TestApp};

on_both_backends!(delete_removes_object_and_row);

async fn delete_removes_object_and_row(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let id = app.upload_ok(&token, "pdf", content(2048, 20)).await;
    assert!(app.object_exists(&id).await);
    let response = app.delete(&token, &id).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"meta":{"api_status":"stable","version":"2.0.1"}}"#
    );
    assert!(app.is_empty().await);
    assert_error(app.get(&token, &id).await, 404, 1006).await;
    assert_error(app.delete(&token, &id).await, 404, 1006).await;
}
