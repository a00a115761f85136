# lme4 + lmerTest loop over a sample of voxels: the per-voxel gold standard and its cost.
#
#   Rscript benchmarks/lme4_loop.R VOXELS.csv STRUCTURE OUT.csv
#
# VOXELS.csv (written by run.py): one row per (voxel, image present at that voxel) with
# columns voxel, y, t, age, group, subject, site.  STRUCTURE: intercept, slope or crossed.
# Fits the model by REML at each voxel, as the workflow does, and writes per voxel the
# log-likelihood, the fixed effects, the T contrasts time = [0 1 0 0] and group = [0 0 0 1]
# with Satterthwaite df (lmerTest::contest1D), and the fit time in seconds.
suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
})
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
structure <- args[2]
form <- switch(structure,
  intercept = y ~ t + age + group + (1 | subject),
  slope = y ~ t + age + group + (1 + t | subject),
  crossed = y ~ t + age + group + (1 | subject) + (1 | site),
  stop("unknown structure ", structure)
)
d$subject <- factor(d$subject)
d$site <- factor(d$site)
ctrl <- lmerControl(check.conv.singular = "ignore", calc.derivs = TRUE)
rows <- list()
for (v in unique(d$voxel)) {
  dv <- d[d$voxel == v, ]
  t0 <- proc.time()[["elapsed"]]
  fit <- lmerTest::lmer(form, data = dv, REML = TRUE, control = ctrl)
  ct <- contest1D(fit, c(0, 1, 0, 0), ddf = "Satterthwaite")
  cg <- contest1D(fit, c(0, 0, 0, 1), ddf = "Satterthwaite")
  secs <- proc.time()[["elapsed"]] - t0
  b <- fixef(fit)
  rows[[length(rows) + 1]] <- data.frame(
    voxel = v, n = nrow(dv), llh = as.numeric(logLik(fit)),
    beta0 = b[[1]], beta1 = b[[2]], beta2 = b[[3]], beta3 = b[[4]],
    sigma2 = sigma(fit)^2, singular = isSingular(fit),
    df_time = ct$df, t_time = ct$`t value`, df_group = cg$df, t_group = cg$`t value`,
    seconds = secs
  )
}
write.csv(do.call(rbind, rows), args[3], row.names = FALSE)
