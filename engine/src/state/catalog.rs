//! Flavors and images: created once, referred to by id or name in requests.

use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use uuid::Uuid;

use super::Engine;
use super::persist::{flavor_rec, image_rec};
use crate::error::{EngineError, Result};
use crate::model::{Flavor, FlavorSpec, Image, ImageSpec};
use crate::store::record::Change;

impl Engine {
    /// Creates a flavor; extra specs are validated and parsed here, once.
    pub fn create_flavor(&self, spec: FlavorSpec) -> Result<Arc<Flavor>> {
        self.writable()?;
        let f = Arc::new(spec.into_flavor()?);
        match self.flavor_names.entry(f.name.clone()) {
            Entry::Occupied(_) => return Err(EngineError::exists("flavor named", &f.name)),
            Entry::Vacant(v) => {
                v.insert(f.id.clone());
            }
        }
        match self.flavors.entry(f.id.clone()) {
            Entry::Occupied(_) => {
                self.flavor_names.remove(&f.name);
                Err(EngineError::exists("flavor", &f.id))
            }
            Entry::Vacant(v) => {
                let f = v.insert(f).clone();
                self.log(|| Change::Flavor(flavor_rec(&f)));
                Ok(f)
            }
        }
    }

    /// A flavor by id or name.
    pub fn get_flavor(&self, id_or_name: &str) -> Result<Arc<Flavor>> {
        if let Some(f) = self.flavors.get(id_or_name) {
            return Ok(f.clone());
        }
        let id = self.flavor_names.get(id_or_name).map(|i| i.clone());
        id.and_then(|id| self.flavors.get(&id).map(|f| f.clone()))
            .ok_or_else(|| EngineError::not_found("flavor", id_or_name))
    }

    /// Every flavor, sorted by name.
    pub fn list_flavors(&self) -> Vec<Arc<Flavor>> {
        let mut v: Vec<_> = self.flavors.iter().map(|f| f.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Deletes a flavor (instances already placed keep their allocations).
    pub fn delete_flavor(&self, id_or_name: &str) -> Result<()> {
        self.writable()?;
        let f = self.get_flavor(id_or_name)?;
        if let Entry::Occupied(o) = self.flavors.entry(f.id.clone()) {
            self.log(|| Change::FlavorDeleted(f.id.clone()));
            o.remove();
        }
        self.flavor_names.remove(&f.name);
        Ok(())
    }

    /// Registers an image.
    pub fn create_image(&self, spec: ImageSpec) -> Result<Arc<Image>> {
        self.writable()?;
        let img = Arc::new(spec.into_image()?);
        match self.image_names.entry(img.name.clone()) {
            Entry::Occupied(_) => return Err(EngineError::exists("image named", &img.name)),
            Entry::Vacant(v) => {
                v.insert(img.id);
            }
        }
        match self.images.entry(img.id) {
            Entry::Occupied(_) => {
                self.image_names.remove(&img.name);
                Err(EngineError::exists("image", img.id))
            }
            Entry::Vacant(v) => {
                let img = v.insert(img).clone();
                self.log(|| Change::Image(image_rec(&img)));
                Ok(img)
            }
        }
    }

    /// An image by id or name.
    pub fn get_image(&self, id_or_name: &str) -> Result<Arc<Image>> {
        let id = match Uuid::parse_str(id_or_name) {
            Ok(u) => Some(u),
            Err(_) => self.image_names.get(id_or_name).map(|u| *u),
        };
        id.and_then(|id| self.images.get(&id).map(|i| i.clone()))
            .ok_or_else(|| EngineError::not_found("image", id_or_name))
    }

    /// Every image, sorted by name.
    pub fn list_images(&self) -> Vec<Arc<Image>> {
        let mut v: Vec<_> = self.images.iter().map(|i| i.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Deletes an image.
    pub fn delete_image(&self, id_or_name: &str) -> Result<()> {
        self.writable()?;
        let img = self.get_image(id_or_name)?;
        if let Entry::Occupied(o) = self.images.entry(img.id) {
            self.log(|| Change::ImageDeleted(img.id.as_bytes().to_vec()));
            o.remove();
        }
        self.image_names.remove(&img.name);
        Ok(())
    }
}
