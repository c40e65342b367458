"""ImageNet-C (Hendrycks & Dietterich, ICLR 2019): its 15 corruptions, 5 severities and the AlexNet errors of mCE.

The corruption order and the AlexNet errors are those of `imagenet.py` in google-research/augmix (commit
9b9824c7c19bf7e72df2d085d97b99b3bfb00ba4), which took the errors from hendrycks/robustness; they agree with
alibaba/easyrobust.
"""

# The 15 ImageNet-C corruptions in the standard order (noise, blur, weather, digital).
IMAGENET_C_CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)

IMAGENET_C_SEVERITIES = (1, 2, 3, 4, 5)

# AlexNet top-1 error on ImageNet-C per corruption (fraction, mean over severities 1-5), used to normalise mCE:
# CE_c = mean_s(err_{c,s}) / ALEXNET_ERR[c], mCE = mean_c CE_c.
ALEXNET_ERR = {
    "gaussian_noise": 0.886428,
    "shot_noise": 0.894468,
    "impulse_noise": 0.92264,
    "defocus_blur": 0.81988,
    "glass_blur": 0.826268,
    "motion_blur": 0.785948,
    "zoom_blur": 0.79836,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic_transform": 0.646056,
    "pixelate": 0.71784,
    "jpeg_compression": 0.6065,
}
