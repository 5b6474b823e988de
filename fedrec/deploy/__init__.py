"""Deployment on real devices: certificates and device keys, per-device data files,
on-device state and recommendations. No Flower imports (the apps live in clients/,
server/); may import the federation's device functions, models and data.
"""
