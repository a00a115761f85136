# Gold-standard likelihood-ratio tests for blmm_scripts.compare: lme4's anova() of two
# nested lmer fits per voxel of the reference data sets (tests/reference/data), and the
# boundary mixture p-value computed by hand.
#
# Usage (from the repository root):
#   Rscript tests/reference/compare/lrt_reference.R [DATA_DIR [OUT_DIR]]
# Defaults: DATA_DIR = tests/reference/data, OUT_DIR = this script's folder.
# Writes OUT_DIR/lrt.csv (one row per comparison x estimation x voxel) and
# OUT_DIR/versions.csv.
#
# Comparisons (small model -> large model):
#   slope_ri_vs_ris   slope data: (0 + z0 | subject) -> (0 + z0 + z1 | subject), a random
#                     slope and its covariance added to a random intercept; reference
#                     0.5 chi2_1 + 0.5 chi2_2 (Stram & Lee 1994; Verbeke & Molenberghs
#                     2000, ch. 6.3)
#   crossed_add_site  crossed data: (0 + z_subject_0 | subject) -> + (0 + z_site_0 | site),
#                     a new factor with a random intercept; 0.5 chi2_0 + 0.5 chi2_1
#   slope_fixed_x2    slope data, ML only: y ~ x0 + x1 -> y ~ x0 + x1 + x2, both with
#                     (0 + z0 + z1 | subject); plain chi2_1 (interior)
# REML pairs are compared with anova(..., refit = FALSE) (same fixed effects); ML pairs
# are fitted by ML.
#
# Columns: comparison, estimation, voxel, n (images present), logLik_small,
# logLik_large, Chisq and Df (anova), p_anova (anova's plain chi2 p-value),
# dfs (mixture components, "1;2"), lp_mixture (-log10 of the mixture p-value:
# sum_i w_i pchisq(Chisq, df_i, lower = FALSE), computed with log.p = TRUE and a
# log-sum-exp, a point mass at 0 for df 0), singular_small, singular_large.
#
# Every fit uses lme4's nloptwrap BOBYQA with very tight tolerances (as
# ../lme4_reference.R) and, for models with a correlation parameter, two more starts
# (off-diagonal theta +-0.5), keeping the best logLik: the reference must be the maximum.

suppressPackageStartupMessages(library(lme4))

script_dir <- local({
  a <- commandArgs(trailingOnly = FALSE)
  f <- sub("^--file=", "", a[grepl("^--file=", a)])
  if (length(f)) dirname(normalizePath(f[1])) else getwd()
})
args <- commandArgs(trailingOnly = TRUE)
data_dir <- if (length(args) >= 1) args[1] else file.path(script_dir, "..", "data")
out_dir <- if (length(args) >= 2) args[2] else script_dir

OPT_CTRL <- list(
  algorithm = "NLOPT_LN_BOBYQA", xtol_abs = 1e-12, ftol_abs = 1e-14,
  xtol_rel = 0, ftol_rel = 0, maxeval = 1e5
)
CONTROL <- lmerControl(optimizer = "nloptwrap", optCtrl = OPT_CTRL)

COMPARISONS <- list(
  slope_ri_vs_ris = list(
    data = "slope", estimations = c("REML", "ML"), dfs = c(1, 2),
    small = y ~ 0 + x0 + x1 + x2 + (0 + z_subject_0 | f_subject),
    large = y ~ 0 + x0 + x1 + x2 + (0 + z_subject_0 + z_subject_1 | f_subject)
  ),
  crossed_add_site = list(
    data = "crossed", estimations = c("REML", "ML"), dfs = c(0, 1),
    small = y ~ 0 + x0 + x1 + x2 + (0 + z_subject_0 | f_subject),
    large = y ~ 0 + x0 + x1 + x2 + (0 + z_subject_0 | f_subject) + (0 + z_site_0 | f_site)
  ),
  slope_fixed_x2 = list(
    data = "slope", estimations = "ML", dfs = 1,
    small = y ~ 0 + x0 + x1 + (0 + z_subject_0 + z_subject_1 | f_subject),
    large = y ~ 0 + x0 + x1 + x2 + (0 + z_subject_0 + z_subject_1 | f_subject)
  )
)

fit_best <- function(formula, d, reml) {
  one <- function(start) {
    suppressWarnings(suppressMessages(
      lmer(formula, data = d, REML = reml, control = CONTROL, start = start)
    ))
  }
  best <- one(NULL)
  lower <- getME(best, "lower")
  if (any(lower != 0)) {
    for (s in c(0.5, -0.5)) {
      cand <- one(list(theta = ifelse(lower == 0, 1, s)))
      if (as.numeric(logLik(cand)) > as.numeric(logLik(best)) + 1e-7) best <- cand
    }
  }
  best
}

# log P(X > x) for X ~ sum_i w_i chi2_{df_i}, df 0 being the point mass at 0
mixture_logsf <- function(x, dfs, w) {
  terms <- vapply(seq_along(dfs), function(i) {
    lsf <- if (dfs[i] == 0) (if (x > 0) -Inf else 0) else
      pchisq(x, dfs[i], lower.tail = FALSE, log.p = TRUE)
    log(w[i]) + lsf
  }, 0)
  m <- max(terms)
  if (x <= 0) return(0)
  m + log(sum(exp(terms - m)))
}

fmt <- function(x) if (is.character(x) || is.logical(x)) as.character(x) else sprintf("%.17g", x)

rows <- list()
for (name in names(COMPARISONS)) {
  cmp <- COMPARISONS[[name]]
  design <- read.csv(file.path(data_dir, paste0(cmp$data, "_design.csv")),
                     stringsAsFactors = FALSE)
  Y <- read.csv(file.path(data_dir, paste0(cmp$data, "_Y.csv")))
  w <- rep(1 / length(cmp$dfs), length(cmp$dfs))
  for (est in cmp$estimations) {
    reml <- est == "REML"
    for (v in seq_along(Y)) {
      y <- Y[[v]]
      keep <- !is.na(y)
      d <- design[keep, , drop = FALSE]
      d$y <- y[keep]
      for (col in grep("^f_", names(d), value = TRUE)) d[[col]] <- factor(d[[col]])
      m0 <- fit_best(cmp$small, d, reml)
      m1 <- fit_best(cmp$large, d, reml)
      a <- suppressMessages(anova(m0, m1, refit = FALSE))
      chisq <- a[["Chisq"]][2]
      rows[[length(rows) + 1]] <- data.frame(
        comparison = name, estimation = est, voxel = v - 1, n = sum(keep),
        logLik_small = fmt(as.numeric(logLik(m0))),
        logLik_large = fmt(as.numeric(logLik(m1))),
        Chisq = fmt(chisq), Df = a[["Df"]][2], p_anova = fmt(a[["Pr(>Chisq)"]][2]),
        dfs = paste(cmp$dfs, collapse = ";"),
        lp_mixture = fmt(-mixture_logsf(chisq, cmp$dfs, w) / log(10)),
        singular_small = isSingular(m0), singular_large = isSingular(m1),
        stringsAsFactors = FALSE
      )
    }
  }
}
write.csv(do.call(rbind, rows), file.path(out_dir, "lrt.csv"), row.names = FALSE)

versions <- data.frame(
  key = c("R", "lme4", "Matrix", "nloptr", "optimizer", "optCtrl", "anova"),
  value = c(R.version.string, as.character(packageVersion("lme4")),
            as.character(packageVersion("Matrix")), as.character(packageVersion("nloptr")),
            "nloptwrap", paste(names(OPT_CTRL), OPT_CTRL, sep = "=", collapse = "; "),
            "anova(small, large, refit = FALSE)")
)
write.csv(versions, file.path(out_dir, "versions.csv"), row.names = FALSE)
