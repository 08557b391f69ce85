"""The report's text in English and Chinese (the tutorial's own language).

Both tables have the same keys and the same ``{placeholders}`` in each string (a test checks it).
Strings are HTML fragments written by us (they may hold ``<code>``, ``<b>``); every value put
into a placeholder is escaped by :mod:`ddpmlab.report.page`.
"""

from __future__ import annotations

EN: dict[str, str] = {
    "title": "ddpmlab report: {run}",
    "intro": "What the run <code>{run}</code> learned, in the tutorial's order: the forward "
             "process on its own training images, its model's reverse process, the objective, "
             "training, sampling and evaluation. Everything on this page is in this folder; it "
             "needs no network and no server.",
    "k_data": "data",
    "k_model": "model",
    "k_diffusion": "diffusion",
    "k_sampler": "sampler",
    "k_checkpoint": "checkpoint",
    "v_model": "{params}M parameters, {how}",
    "v_conditional": "conditional on {k} classes (classifier-free guidance)",
    "v_unconditional": "unconditional",
    "v_diffusion": "{schedule} schedule, T = {T}, the network predicts {prediction}",
    "v_sampler": "{sampler}, {steps} steps{guidance}",
    "v_guidance": ", guidance w = {w}",
    "v_checkpoint": "{path} (step {step}, EMA weights)",
    "nav_forward": "1 Forward",
    "nav_reverse": "2 Reverse",
    "nav_objective": "3 Objective",
    "nav_training": "4 Training",
    "nav_sampling": "5 Sampling",
    "nav_evaluation": "6 Evaluation",
    # 1. forward
    "forward_h": "1. Forward process: noising a training image",
    "forward_p": "The forward process adds Gaussian noise in T small steps. Its closed form jumps "
                 "from the image x<sub>0</sub> to any x<sub>t</sub> in one step, so training "
                 "never has to walk the chain. Below, {n} training images are noised with the "
                 "<b>same noise &epsilon;</b> at every t: move the slider and watch one noise "
                 "pattern grow while the image fades. The image coefficient "
                 "&radic;&alpha;&#x304;<sub>t</sub> shrinks, the noise coefficient "
                 "&radic;(1&minus;&alpha;&#x304;<sub>t</sub>) grows, and their squares always add up "
                 "to 1. Index t counts from 0 (the paper's step t + 1).",
    "forward_x0": "x<sub>0</sub> (training images)",
    "forward_eps": "&epsilon; (the one noise draw)",
    "forward_xt": "x<sub>t</sub>",
    "forward_curve": "the {schedule} schedule: image and noise coefficients against t",
    "t_label": "t",
    "img_coef": "image coefficient",
    "noise_coef": "noise coefficient",
    "snr": "signal-to-noise ratio",
    # 2. reverse
    "reverse_h": "2. Reverse process: from pure noise to an image",
    "reverse_p": "Sampling starts from pure noise x<sub>T</sub> ~ N(0, I) and applies the learned "
                 "p<sub>&theta;</sub>(x<sub>t&minus;1</sub> | x<sub>t</sub>) step by step. At "
                 "every step the network's prediction gives an estimate x&#x302;<sub>0</sub> of "
                 "the clean image (lower row); the sampler moves x<sub>t</sub> (upper row) "
                 "towards it. The same {n} samples are drawn twice from the same starting noise: "
                 "with the run's own sampler, and with the paper's ancestral sampler over all "
                 "{T} steps. The ancestral sampler adds fresh noise &sigma;<sub>t</sub>z at "
                 "every step except the last one, which returns the mean: drag its slider to the "
                 "end.",
    "reverse_run": "the run's sampler: {sampler}, {steps} steps{guidance}",
    "reverse_ddpm": "ancestral sampling (DDPM, Algorithm 2), all {T} steps{guidance}; {k} of "
                    "the {states} states shown",
    "rows_note": "upper row: x<sub>t</sub>; lower row: the model's estimate "
                 "x&#x302;<sub>0</sub>",
    "step_label": "step",
    "noise_added": "noise added by this step (std of x<sub>t&minus;1</sub> &minus; "
                   "&mu;<sub>&theta;</sub>)",
    "deterministic": "this sampler adds no noise",
    "stochastic": "noise: {what}",
    "output": "output",
    "no_noise_last": "0: no noise at the last step",
    "last_step_z": "z = 0 at the last step",
    "play": "play",
    "pause": "pause",
    # 3. objective
    "objective_h": "3. Objective: the evidence lower bound, term by term",
    "objective_p": "Training maximises a lower bound on the log-likelihood (the ELBO). It splits "
                   "into one term per timestep: the prior L<sub>T</sub> (how far "
                   "q(x<sub>T</sub> | x<sub>0</sub>) is from N(0, I); nothing to learn), the "
                   "diffusion terms L<sub>t&minus;1</sub>, each a KL divergence between two "
                   "Gaussians, the true posterior and the model's step, and the decoder "
                   "L<sub>0</sub>, the likelihood of the 8-bit pixels. Divided by D ln 2 (D = "
                   "{D} values per image) they are bits per dimension. Below: {n} held-out "
                   "images, each term estimated from one noise draw per image at {k} of the "
                   "{T} timesteps (stratified: unbiased for the sum).",
    "objective_note_cond": "A conditional run is scored without a class (its null class), as "
                           "<code>ddpmlab eval</code> does.",
    "objective_undefined": "These ELBO terms belong to the ddpm objective; this run was trained "
                           "with the {objective} objective, so they are not shown.",
    "objective_heldout": "the held-out images and their bits/dim",
    "objective_train_only": "This data set has no separate held-out split: these are training "
                            "images.",
    "term": "term",
    "this_report": "this report",
    "eval_column": "ddpmlab eval",
    "prior": "prior L<sub>T</sub>",
    "diffusion_terms": "diffusion &sum; L<sub>t&minus;1</sub>",
    "decoder": "decoder L<sub>0</sub>",
    "total": "total (bits/dim)",
    "images_timesteps": "{n} images, {k} timesteps",
    # 4. training
    "training_h": "4. Training: the loss and the samples as training goes on",
    "training_p": "One training step: draw an image x<sub>0</sub>, a timestep t and noise "
                  "&epsilon;, make x<sub>t</sub> in one jump (section 1), and regress the "
                  "network's prediction on its target with a mean squared error. This run's "
                  "network predicts <b>{prediction}</b>. Sampling uses the EMA weights, an "
                  "exponential moving average of the parameters (decay {ema}).",
    "loss_caption": "{n} logged steps; last loss {loss} at step {step}",
    "loss_missing": "No training loss in the run's metrics file yet ({why}).",
    "ckpt_p": "The same noise (fixed seeds), denoised by the EMA weights of every saved "
              "checkpoint{classes}: watch the same noise turn into images as training "
              "progresses.",
    "ckpt_classes": ", sample k asking for class k",
    "ckpt_unguided": " The rows are drawn without the run's autoguidance guide "
                     "(<code>sample.guide</code>), so they compare across steps like the grids "
                     "drawn during training.",
    "ckpt_one": "Only one checkpoint is saved (train.keep_last = {keep}, train.ckpt_every = "
                "{every}), so there is no progression to show. Train with a smaller "
                "train.ckpt_every and a larger train.keep_last to keep more.",
    "ckpt_capped": "{shown} of the {total} saved checkpoints are shown (evenly spaced).",
    "step_n": "step {step}",
    "train_grids": "Grids drawn during training (train.sample_every = {every}), from "
                   "<code>{path}</code>:",
    "augment_p": "Trained with non-leaking augmentation (train.augment = {p}): each image was "
                 "mirrored, turned by a quarter turn or more, and shifted, each with "
                 "probability {p}, and the network was told which through extra labels. Every "
                 "sample here is drawn with the labels saying \u201cnone\u201d, so the "
                 "transforms do not leak into the samples.",
    "augment_off": "The network takes augmentation labels (model.augment_dim), but this run "
                   "trained without augmentation (train.augment = 0): the labels were zero.",
    "watch_p": "The copy watch (train.watch_copies): at each checkpoint, the share of EMA "
               "samples closer to a training image than a third of the typical distance of new "
               "real images to the training set, beside that share for the real images "
               "themselves (chance level). A share that rises above both is a model starting "
               "to copy its training images.",
    "watch_step": "step",
    "watch_n": "samples",
    "watch_share": "near-copies",
    "watch_heldout": "real images",
    "watch_flag": "warning",
    "watch_rise": "rising: the model starts to copy",
    # 5. sampling
    "sampling_h": "5. Sampling: classes, guidance, and the number of steps",
    "sampling_p_cond": "One row per class with the run's sampler and guidance w = {w}. "
                       "Classifier-free guidance mixes the model's conditional and "
                       "unconditional predictions; w = 0 is the unconditional model, w = 1 the "
                       "plain conditional one, larger w pushes each image towards its class.",
    "sampling_p_uncond": "{n} samples with the run's sampler. This run is unconditional (it "
                         "was trained without labels), so there is no grid per class and no "
                         "guidance sweep; train with <code>--conditional</code> on labelled data "
                         "for those.",
    "classes_capped": "The first {shown} of the {total} classes.",
    "guidance_h": "Guidance sweep: the same seeds (one sample per class in each row) for w "
                  "from {lo} to {hi}",
    "sweep_columns": "columns, from left to right: {names}",
    "nfe_h": "Samples against the number of network evaluations (NFE)",
    "nfe_p": "The {n} starting noises of section 2, solved by several samplers with few "
             "network evaluations (NFE, as <code>ddpmlab samplers</code> counts them{guided}); "
             "the last row is the ancestral sampler over all {T} steps.",
    "nfe_guided": "; guidance evaluates both halves in one batch",
    "sampler": "sampler",
    "nfe_cell": "{nfe} NFE",
    "reference": "ancestral, {T} steps",
    # 6. evaluation
    "evaluation_h": "6. Evaluation",
    "eval_p": "From <code>ddpmlab eval</code> on {checkpoint}:",
    "eval_missing": "This run has no evaluation yet. <code>ddpmlab eval {run}</code> computes "
                    "FID, KID, precision/recall, the classifier's confidence, memorization and "
                    "bits/dim; run <code>ddpmlab report {run}</code> again afterwards to show "
                    "them here.",
    "eval_old_checkpoint": "(The evaluation scored {old}; this report shows {new}.)",
    "eval_summary_only": "Only the summary line of the metrics file is available (an older "
                         "ddpmlab); <code>ddpmlab eval {run}</code> writes the whole table.",
    "metric": "metric",
    "value": "value",
    "m_samples": "samples",
    "m_fid": "FID",
    "m_kid": "KID",
    "m_precision": "precision",
    "m_recall": "recall",
    "m_confident": "classified with confidence &ge; {c}",
    "m_memorization": "near-copies of training images (ratio &lt; {thr})",
    "m_bpd": "bits/dim (held-out)",
    "m_real": "real held-out: {v}",
    "m_baseline": "two real sets of this size: {v}",
    "nearest_h": "Nearest training images of the closest samples",
    "nearest_eval": "From <code>ddpmlab eval</code> ({n} samples): each sample beside its "
                    "nearest training image in pixel space, and their distance relative to "
                    "that of a new real image (1: as far as a real image; 0: a copy).",
    "nearest_report": "From the {n} samples of section 5 (pixel space): the closest ones beside "
                      "their nearest training images, and the distance relative to that of a "
                      "new real image (1: as far as a real image; 0: a copy); {flagged} of {n} "
                      "below {thr}. <code>ddpmlab eval</code> does this for thousands of "
                      "samples.",
    "data_missing": "The run's data set cannot be read, so this part is missing: {why}",
    # 7. editing
    "nav_editing": "7 Editing",
    "editing_h": "7. Editing with the model: inpainting, img2img, inversion, translation",
    "editing_p": "The trained network does more than sample: the same reverse steps, started "
                 "from a held-out image instead of pure noise, edit it. Each picture has one row "
                 "per held-out image. Every operation drives the run's own sampler steps "
                 "(<code>ddpmlab.edit</code>); <code>ddpmlab edit {run} OPERATION --held-out N"
                 "</code> does the same on any images.{guided}",
    "edit_guided": " Inpainting and img2img use the run's guidance w = {w} (each evaluation "
                   "runs both halves); inversion and translation use w = 1, where inverting is "
                   "exact up to the solver's error.",
    "edit_replacement": "Inpainting the right half by plain replacement ({sampler}, {steps} "
                        "steps; {nfe} network evaluations per image): before every step the "
                        "kept left half is replaced by the image noised to that step's level. "
                        "Columns: the image, what is kept (the half to generate in grey), the "
                        "result.",
    "edit_repaint": "RePaint: the same, with jumps back up of j = {j} levels, each stretch "
                    "walked r = {r} times ({nfe} network evaluations per image). The extra "
                    "passes let the generated half agree with the kept one; the kept half is "
                    "pasted exactly at the end.",
    "edit_img2img": "img2img (SDEdit) at strength {strength}: the image noised to index t = {t} "
                    "and sampled back from there ({nfe} network evaluations per image). "
                    "Columns: the image, the result. Strength 0 returns the image, 1 samples "
                    "from pure noise.",
    "edit_invert": "Inversion: the image carried up to x<sub>T</sub> by {sampler} run backwards "
                   "in {steps} steps (no clipping, guidance 1), then regenerated by the same "
                   "solver ({nfe} network evaluations per image). Columns: the image, "
                   "x<sub>T</sub> / 3, the reconstruction. Reconstruction PSNR: {psnr} dB on "
                   "average (more steps give a smaller error: <code>ddpmlab edit {run} invert "
                   "--steps N</code>).",
    "edit_translate": "Class translation (DDIB): each image inverted with its own class, then "
                      "regenerated with each class in turn ({classes}; {nfe} network "
                      "evaluations per image for all of them). Columns: the image, then one "
                      "per class.",
    "footer": "Written by <code>ddpmlab report</code> in {seconds} s on {device}. The static "
              "figures of the tutorial are <code>ddpmlab figures {run}</code>.",
}

ZH: dict[str, str] = {
    "title": "ddpmlab 报告：{run}",
    "intro": "运行 <code>{run}</code> 学到了什么，按教程的顺序：在它自己的训练图像上的前向过程、"
             "它的模型的反向过程、目标函数、训练、采样和评估。本页的一切都在这个文件夹里，"
             "不需要网络，也不需要服务器。",
    "k_data": "数据",
    "k_model": "模型",
    "k_diffusion": "扩散",
    "k_sampler": "采样器",
    "k_checkpoint": "检查点",
    "v_model": "{params}M 个参数，{how}",
    "v_conditional": "以 {k} 个类别为条件（无分类器引导）",
    "v_unconditional": "无条件",
    "v_diffusion": "{schedule} 噪声表，T = {T}，网络预测 {prediction}",
    "v_sampler": "{sampler}，{steps} 步{guidance}",
    "v_guidance": "，引导强度 w = {w}",
    "v_checkpoint": "{path}（第 {step} 步，EMA 权重）",
    "nav_forward": "1 前向",
    "nav_reverse": "2 反向",
    "nav_objective": "3 目标函数",
    "nav_training": "4 训练",
    "nav_sampling": "5 采样",
    "nav_evaluation": "6 评估",
    "forward_h": "1. 前向过程：给训练图像加噪",
    "forward_p": "前向过程分 T 个小步加入高斯噪声。它的闭式解可以从图像 x<sub>0</sub> 一步跳到任意 "
                 "x<sub>t</sub>，所以训练时不必一步步走完整条链。下面 {n} 张训练图像在每个 t 上都用"
                 "<b>同一个噪声 &epsilon;</b> 加噪：拖动滑块，看同一个噪声图案逐渐变强、图像逐渐消失。"
                 "图像系数 &radic;&alpha;&#x304;<sub>t</sub> 变小，噪声系数 "
                 "&radic;(1&minus;&alpha;&#x304;<sub>t</sub>) 变大，两者的平方和始终为 1。"
                 "下标 t 从 0 开始（即论文中的第 t + 1 步）。",
    "forward_x0": "x<sub>0</sub>（训练图像）",
    "forward_eps": "&epsilon;（唯一的一次噪声采样）",
    "forward_xt": "x<sub>t</sub>",
    "forward_curve": "{schedule} 噪声表：图像系数和噪声系数随 t 的变化",
    "t_label": "t",
    "img_coef": "图像系数",
    "noise_coef": "噪声系数",
    "snr": "信噪比",
    "reverse_h": "2. 反向过程：从纯噪声到图像",
    "reverse_p": "采样从纯噪声 x<sub>T</sub> ~ N(0, I) 出发，一步步应用学到的 "
                 "p<sub>&theta;</sub>(x<sub>t&minus;1</sub> | x<sub>t</sub>)。每一步，网络的预测都给出"
                 "干净图像的一个估计 x&#x302;<sub>0</sub>（下面一行）；采样器把 x<sub>t</sub>"
                 "（上面一行）推向它。同样的 {n} 个样本从同一个初始噪声出发画了两次：一次用本次运行"
                 "自己的采样器，一次用论文的祖先采样走完全部 {T} 步。祖先采样每一步都加入新的噪声 "
                 "&sigma;<sub>t</sub>z，只有最后一步例外，它直接返回均值：把它的滑块拖到最后看看。",
    "reverse_run": "本次运行的采样器：{sampler}，{steps} 步{guidance}",
    "reverse_ddpm": "祖先采样（DDPM，算法 2），全部 {T} 步{guidance}；显示 {states} 个状态中的 {k} 个",
    "rows_note": "上面一行：x<sub>t</sub>；下面一行：模型的估计 x&#x302;<sub>0</sub>",
    "step_label": "步",
    "noise_added": "这一步加入的噪声（x<sub>t&minus;1</sub> &minus; &mu;<sub>&theta;</sub> 的标准差）",
    "deterministic": "这个采样器不加噪声",
    "stochastic": "噪声：{what}",
    "output": "输出",
    "no_noise_last": "0：最后一步不加噪声",
    "last_step_z": "最后一步 z = 0",
    "play": "播放",
    "pause": "暂停",
    "objective_h": "3. 目标函数：逐项看证据下界（ELBO）",
    "objective_p": "训练最大化对数似然的一个下界（ELBO）。它按时间步拆成若干项：先验项 "
                   "L<sub>T</sub>（q(x<sub>T</sub> | x<sub>0</sub>) 与 N(0, I) 的距离，无需学习）、"
                   "扩散项 L<sub>t&minus;1</sub>（每一项都是两个高斯分布之间的 KL 散度：真实后验与"
                   "模型的一步），以及解码项 L<sub>0</sub>（8 位像素的似然）。除以 D ln 2（每张图像 "
                   "D = {D} 个数值）就得到每维比特数（bits/dim）。下面是 {n} 张留出图像，每一项在 "
                   "{T} 个时间步中的 {k} 个上、对每张图像用一次噪声采样来估计（分层抽样：对总和无偏）。",
    "objective_note_cond": "条件模型在这里不带类别（使用空类别）来评分，与 <code>ddpmlab eval</code> 相同。",
    "objective_undefined": "这些 ELBO 项属于 ddpm 目标；本次运行是用 {objective} 目标训练的，"
                           "所以这里不显示。",
    "objective_heldout": "留出图像及其 bits/dim",
    "objective_train_only": "这个数据集没有单独的留出集：这些是训练图像。",
    "term": "项",
    "this_report": "本报告",
    "eval_column": "ddpmlab eval",
    "prior": "先验 L<sub>T</sub>",
    "diffusion_terms": "扩散 &sum; L<sub>t&minus;1</sub>",
    "decoder": "解码 L<sub>0</sub>",
    "total": "总计（bits/dim）",
    "images_timesteps": "{n} 张图像，{k} 个时间步",
    "training_h": "4. 训练：损失曲线与训练过程中的样本",
    "training_p": "一个训练步：取一张图像 x<sub>0</sub>、一个时间步 t 和噪声 &epsilon;，一步得到 "
                  "x<sub>t</sub>（第 1 节），再用均方误差让网络的预测逼近目标。本次运行的网络预测 "
                  "<b>{prediction}</b>。采样用的是 EMA 权重，即参数的指数移动平均（衰减率 {ema}）。",
    "loss_caption": "记录了 {n} 个训练步；最后的损失为 {loss}（第 {step} 步）",
    "loss_missing": "运行的指标文件里还没有训练损失（{why}）。",
    "ckpt_p": "同一组噪声（固定的随机种子），由每个已保存检查点的 EMA 权重去噪{classes}："
              "看同一个噪声如何随着训练的进行变成图像。",
    "ckpt_classes": "，第 k 个样本要求类别 k",
    "ckpt_unguided": "这些行不使用本次运行的自引导模型（<code>sample.guide</code>），"
                     "因此和训练中画出的网格一样，可以在各步之间比较。",
    "ckpt_one": "只保存了一个检查点（train.keep_last = {keep}，train.ckpt_every = {every}），"
                "所以无法展示训练进程。训练时设更小的 train.ckpt_every 和更大的 train.keep_last "
                "可以保留更多检查点。",
    "ckpt_capped": "显示了 {total} 个已保存检查点中的 {shown} 个（均匀间隔）。",
    "step_n": "第 {step} 步",
    "augment_p": "本次训练使用了不泄漏的数据增强（train.augment = {p}）：每张图像各以概率 {p} 被"
                 "左右翻转、旋转四分之一圈或更多、平移，并通过额外的标签告诉网络做了哪种变换。"
                 "这里的每个样本都在标签为“无变换”时生成，所以这些变换不会泄漏到样本中。",
    "augment_off": "网络接受数据增强标签（model.augment_dim），但本次训练没有使用增强"
                   "（train.augment = 0）：标签都是零。",
    "watch_p": "复制监视（train.watch_copies）：在每个检查点，离某张训练图像的距离小于新的真实图像"
               "到训练集典型距离三分之一的 EMA 样本所占比例，旁边是真实图像本身的这一比例（随机水平）。"
               "比例升到两者之上，说明模型开始复制训练图像。",
    "watch_step": "训练步",
    "watch_n": "样本数",
    "watch_share": "近似复制",
    "watch_heldout": "真实图像",
    "watch_flag": "警告",
    "watch_rise": "上升：模型开始复制",
    "train_grids": "训练过程中画的样本网格（train.sample_every = {every}），来自 <code>{path}</code>：",
    "sampling_h": "5. 采样：类别、引导和步数",
    "sampling_p_cond": "每个类别一行，使用本次运行的采样器和引导强度 w = {w}。无分类器引导把模型的条件预测"
                       "和无条件预测混合起来：w = 0 是无条件模型，w = 1 是普通的条件模型，"
                       "更大的 w 把每张图像推向它的类别。",
    "sampling_p_uncond": "用本次运行的采样器画的 {n} 个样本。本次运行是无条件的（训练时没有标签），"
                         "所以没有按类别的网格，也没有引导强度的对比；要得到它们，请在有标签的数据上用 "
                         "<code>--conditional</code> 训练。",
    "classes_capped": "{total} 个类别中的前 {shown} 个。",
    "guidance_h": "引导强度对比：同一组随机种子（每行每个类别一个样本），w 从 {lo} 到 {hi}",
    "sweep_columns": "从左到右的列：{names}",
    "nfe_h": "样本与网络评估次数（NFE）",
    "nfe_p": "第 2 节的 {n} 个初始噪声，用几种采样器以很少的网络评估次数求解（NFE，按 "
             "<code>ddpmlab samplers</code> 的计数方式{guided}）；最后一行是走完全部 {T} 步的祖先采样。",
    "nfe_guided": "；引导的两半在同一个批次里计算",
    "sampler": "采样器",
    "nfe_cell": "{nfe} 次 NFE",
    "reference": "祖先采样，{T} 步",
    "evaluation_h": "6. 评估",
    "eval_p": "来自 <code>ddpmlab eval</code>，评估的是 {checkpoint}：",
    "eval_missing": "本次运行还没有评估。<code>ddpmlab eval {run}</code> 会计算 FID、KID、"
                    "precision/recall、分类器置信度、记忆程度和 bits/dim；之后再运行一次 "
                    "<code>ddpmlab report {run}</code>，它们就会显示在这里。",
    "eval_old_checkpoint": "（评估针对的是 {old}；本报告显示的是 {new}。）",
    "eval_summary_only": "只有指标文件中的摘要行（较旧的 ddpmlab 写的）；"
                         "<code>ddpmlab eval {run}</code> 会写出完整的表格。",
    "metric": "指标",
    "value": "数值",
    "m_samples": "样本",
    "m_fid": "FID",
    "m_kid": "KID",
    "m_precision": "precision（精确率）",
    "m_recall": "recall（召回率）",
    "m_confident": "以 &ge; {c} 的置信度被分类",
    "m_memorization": "近似复制训练图像的比例（比值 &lt; {thr}）",
    "m_bpd": "bits/dim（留出集）",
    "m_real": "真实留出图像：{v}",
    "m_baseline": "同样大小的两组真实图像：{v}",
    "nearest_h": "最接近训练集的样本及其最近邻训练图像",
    "nearest_eval": "来自 <code>ddpmlab eval</code>（{n} 个样本）：每个样本旁边是像素空间中离它最近的"
                    "训练图像，以及相对于一张新的真实图像的距离比值（1：和真实图像一样远；0：复制品）。",
    "nearest_report": "来自第 5 节的 {n} 个样本（像素空间）：最接近的几个样本和它们最近的训练图像，"
                      "以及相对于一张新的真实图像的距离比值（1：和真实图像一样远；0：复制品）；{n} 个中有 "
                      "{flagged} 个低于 {thr}。<code>ddpmlab eval</code> 会对成千上万个样本做同样的检查。",
    "data_missing": "无法读取本次运行的数据集，所以这一部分缺失：{why}",
    "nav_editing": "7 编辑",
    "editing_h": "7. 用模型编辑图像：修补、图生图、反演、类别转换",
    "editing_p": "训练好的网络不只会采样：同样的反向步骤，从一张留出图像而不是纯噪声出发，就能编辑它。"
                 "下面每张图中每一行是一张留出图像。每种操作都驱动本次运行自己的采样器步骤"
                 "（<code>ddpmlab.edit</code>）；<code>ddpmlab edit {run} OPERATION --held-out N"
                 "</code> 可以对任意图像做同样的事。{guided}",
    "edit_guided": "修补和图生图使用本次运行的引导强度 w = {w}（每次网络评估都计算两半）；反演和类别"
                   "转换使用 w = 1，此时反演只差求解器本身的误差。",
    "edit_replacement": "用简单替换修补右半边（{sampler}，{steps} 步；每张图像 {nfe} 次网络评估）："
                        "每一步之前，保留的左半边都换成加噪到该步噪声水平的原图。各列：原图、保留的部分"
                        "（要生成的一半显示为灰色）、结果。",
    "edit_repaint": "RePaint：同上，但每次向上跳回 j = {j} 个水平，每一段走 r = {r} 遍"
                    "（每张图像 {nfe} 次网络评估）。多走的几遍让生成的一半与保留的一半协调；"
                    "最后把保留的一半原样贴回。",
    "edit_img2img": "强度为 {strength} 的图生图（SDEdit）：把图像加噪到下标 t = {t}，再从那里采样回来"
                    "（每张图像 {nfe} 次网络评估）。各列：原图、结果。强度 0 返回原图，1 从纯噪声采样。",
    "edit_invert": "反演：用反向运行的 {sampler} 在 {steps} 步内把图像带到 x<sub>T</sub>（不截断，"
                   "引导强度 1），再用同一个求解器重新生成（每张图像 {nfe} 次网络评估）。各列：原图、"
                   "x<sub>T</sub> / 3、重建结果。平均重建 PSNR：{psnr} dB（步数越多误差越小："
                   "<code>ddpmlab edit {run} invert --steps N</code>）。",
    "edit_translate": "类别转换（DDIB）：每张图像先用它自己的类别反演，再依次用每个类别重新生成"
                      "（{classes}；全部类别合计每张图像 {nfe} 次网络评估）。各列：原图，然后每个类别一列。",
    "footer": "由 <code>ddpmlab report</code> 在 {device} 上用 {seconds} 秒写成。教程的静态插图由 "
              "<code>ddpmlab figures {run}</code> 生成。",
}

STRINGS: dict[str, dict[str, str]] = {"en": EN, "zh": ZH}
