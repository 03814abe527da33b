"""deep: ResNet training with SCL + prototypes on real images, with the geometry tracked per epoch
and compared with the UFM prediction of ncgeo."""
