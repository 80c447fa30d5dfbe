"""SIM model parts: ResNet encoders, ASPP, decoder, matting network, patch classifier, registry."""
