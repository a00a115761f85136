# lme4 / lmerTest fits of the formula reference (issue 12): the participants table
# formula_data.tsv (from make_formula_data.py) fitted with the formula in model.txt,
# the same text the formula front end reads, with y0..y5 as the response.
#
# Usage (from the repository root):
#   Rscript tests/reference/formula/formula_reference.R [OUT_DIR]
#
# Writes OUT_DIR/formula_{REML,ML}.csv (one row per voxel) and OUT_DIR/versions.csv
# (default OUT_DIR: this folder).  Columns:
#   n                rows used (lme4's na.omit drops the rows with age n/a)
#   logLik           as.numeric(logLik(fit)), REML or ML, all constants
#   sigma2           sigma(fit)^2
#   beta:<name>      fixef(fit), by lme4's coefficient names ((Intercept), sexM, age:sexM)
#   se:<name>        sqrt(diag(vcov(fit)))
#   D_0, D_1, D_2    vech of VarCorr(fit)$participant_id / sigma2: (0,0), (1,0), (1,1)
#   <T>_est/_se/_df/_t   lmerTest::contest1D(fit, L, ddf = "Satterthwaite")
#   <F>_F/_ndf/_ddf      lmerTest::contestMD(fit, L, ddf = "Satterthwaite")
#   singular         lme4::isSingular(fit)
# Contrasts are written here with lme4's names; the Python test writes the same ones
# with formulaic's names (age:sex[T.M], group[T.b] - group[T.c]).

suppressPackageStartupMessages(library(lmerTest))  # attaches lme4 too

# Run from the repository root (see Usage); inputs are read from this folder.
script_dir <- file.path("tests", "reference", "formula")
args <- commandArgs(trailingOnly = TRUE)
out_dir <- if (length(args) >= 1) args[1] else script_dir

# The same tight optimizer as tests/reference/lme4_reference.R (see its comment).
OPT_CTRL <- list(
  algorithm = "NLOPT_LN_BOBYQA", xtol_abs = 1e-12, ftol_abs = 1e-14,
  xtol_rel = 0, ftol_rel = 0, maxeval = 1e5
)
CONTROL <- lmerControl(optimizer = "nloptwrap", optCtrl = OPT_CTRL)

model <- trimws(readLines(file.path(script_dir, "model.txt"), n = 1))
data <- read.delim(
  file.path(script_dir, "formula_data.tsv"),
  na.strings = c("", "n/a"), stringsAsFactors = FALSE
)
ys <- grep("^y[0-9]+$", names(data), value = TRUE)

T_CONTRASTS <- list(
  age_by_sex = c("age:sexM" = 1),
  b_minus_c = c(groupb = 1, groupc = -1)
)
F_CONTRASTS <- list(group = list(c(groupb = 1), c(groupc = 1)))

as_row <- function(weights, names) {
  L <- setNames(rep(0, length(names)), names)
  L[names(weights)] <- weights
  L
}

fit_voxel <- function(y, reml) {
  fit <- lmerTest::lmer(as.formula(paste(y, model)), data = data, REML = reml,
                        control = CONTROL)
  b <- fixef(fit)
  V <- as.matrix(vcov(fit))
  s2 <- sigma(fit)^2
  D <- as.matrix(VarCorr(fit)$participant_id) / s2
  row <- list(voxel = y, n = nobs(fit), logLik = as.numeric(logLik(fit)),
              sigma2 = s2, singular = isSingular(fit))
  for (nm in names(b)) {
    row[[paste0("beta:", nm)]] <- unname(b[nm])
    row[[paste0("se:", nm)]] <- sqrt(V[nm, nm])
  }
  vech <- D[lower.tri(D, diag = TRUE)]
  for (j in seq_along(vech)) row[[paste0("D_", j - 1)]] <- vech[j]
  for (cn in names(T_CONTRASTS)) {
    r <- contest1D(fit, as_row(T_CONTRASTS[[cn]], names(b)), ddf = "Satterthwaite")
    row[[paste0(cn, "_est")]] <- r$Estimate
    row[[paste0(cn, "_se")]] <- r$`Std. Error`
    row[[paste0(cn, "_df")]] <- r$df
    row[[paste0(cn, "_t")]] <- r$`t value`
  }
  for (cn in names(F_CONTRASTS)) {
    L <- do.call(rbind, lapply(F_CONTRASTS[[cn]], as_row, names = names(b)))
    r <- contestMD(fit, L, ddf = "Satterthwaite")
    row[[paste0(cn, "_F")]] <- r$`F value`
    row[[paste0(cn, "_ndf")]] <- r$NumDF
    row[[paste0(cn, "_ddf")]] <- r$DenDF
  }
  as.data.frame(row, check.names = FALSE)
}

for (est in c("REML", "ML")) {
  rows <- do.call(rbind, lapply(ys, fit_voxel, reml = est == "REML"))
  write.csv(rows, file.path(out_dir, paste0("formula_", est, ".csv")),
            row.names = FALSE)
}

versions <- data.frame(
  key = c("R", "lme4", "lmerTest", "Matrix", "nloptr", "optimizer", "optCtrl",
          "model", "ddf"),
  value = c(R.version.string, as.character(packageVersion("lme4")),
            as.character(packageVersion("lmerTest")),
            as.character(packageVersion("Matrix")),
            as.character(packageVersion("nloptr")), "nloptwrap",
            paste(names(OPT_CTRL), OPT_CTRL, sep = "=", collapse = "; "), model,
            "Satterthwaite (lmerTest contest1D / contestMD)")
)
write.csv(versions, file.path(out_dir, "versions.csv"), row.names = FALSE)
