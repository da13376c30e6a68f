//! `/products` and `/customers`: JSON CRUD over the catalog tables.

use hyper::header::{HeaderValue, LOCATION};
use hyper::{Response, StatusCode};
use serde::Deserialize;
use utoipa::ToSchema;

use super::body::json;
use super::error::ApiError;
use super::{App, Body, Req, empty, json_response};
use crate::broker::{CustomerFields, ProductFields};
use crate::catalog::{CustomerId, ProductId};
use crate::money::Money;

#[derive(Deserialize, ToSchema)]
pub(super) struct NewProduct {
    id: Option<u64>,
    name: String,
    price: Money,
    #[serde(default)]
    stock: u64,
}

#[derive(Deserialize, ToSchema)]
pub(super) struct ProductUpdate {
    name: Option<String>,
    price: Option<Money>,
    stock: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
pub(super) struct NewCustomer {
    id: Option<u64>,
    name: String,
    phone: Option<String>,
    #[serde(default)]
    balance: Money,
}

#[derive(Deserialize, ToSchema)]
pub(super) struct CustomerUpdate {
    name: Option<String>,
    /// Empty text clears the phone number.
    phone: Option<String>,
    balance: Option<Money>,
}

const NO_PRODUCT: &str = "Product not found";
const NO_CUSTOMER: &str = "Customer not found";

pub fn list_products(app: &App) -> Result<Response<Body>, ApiError> {
    Ok(json_response(StatusCode::OK, &app.broker().products()))
}

pub fn get_product(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let product = app
        .broker()
        .product(ProductId(req.id(NO_PRODUCT)?))
        .ok_or_else(|| ApiError::not_found(NO_PRODUCT))?;
    Ok(json_response(StatusCode::OK, &product))
}

pub fn create_product(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let new: NewProduct = json(&req.headers, &req.body)?;
    let product = app
        .broker()
        .create_product(new.id, new.name, new.price, new.stock)?;
    Ok(created(&format!("/products/{}", product.id.0), &product))
}

pub fn update_product(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let id = ProductId(req.id(NO_PRODUCT)?);
    let update: ProductUpdate = json(&req.headers, &req.body)?;
    let fields = ProductFields {
        name: update.name,
        price: update.price,
        stock: update.stock,
    };
    let product = app.broker().update_product(id, fields)?;
    Ok(json_response(StatusCode::OK, &product))
}

pub fn delete_product(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    app.broker()
        .delete_product(ProductId(req.id(NO_PRODUCT)?))?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub fn list_customers(app: &App) -> Result<Response<Body>, ApiError> {
    Ok(json_response(StatusCode::OK, &app.broker().customers()))
}

pub fn get_customer(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let customer = app
        .broker()
        .customer(CustomerId(req.id(NO_CUSTOMER)?))
        .ok_or_else(|| ApiError::not_found(NO_CUSTOMER))?;
    Ok(json_response(StatusCode::OK, &customer))
}

pub fn create_customer(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let new: NewCustomer = json(&req.headers, &req.body)?;
    let customer = app
        .broker()
        .create_customer(new.id, new.name, new.phone, new.balance)?;
    Ok(created(&format!("/customers/{}", customer.id.0), &customer))
}

pub fn update_customer(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let id = CustomerId(req.id(NO_CUSTOMER)?);
    let update: CustomerUpdate = json(&req.headers, &req.body)?;
    let fields = CustomerFields {
        name: update.name,
        phone: update.phone.map(|p| Some(p).filter(|p| !p.is_empty())),
        balance: update.balance,
    };
    let customer = app.broker().update_customer(id, fields)?;
    Ok(json_response(StatusCode::OK, &customer))
}

pub fn delete_customer(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    app.broker()
        .delete_customer(CustomerId(req.id(NO_CUSTOMER)?))?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// 201 with the new record and where it lives.
pub fn created<T: serde::Serialize>(location: &str, record: &T) -> Response<Body> {
    let mut response = json_response(StatusCode::CREATED, record);
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}
